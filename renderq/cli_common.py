"""What every `renderq` command shares: exit statuses, the usage error, the coordinator client and JSON output."""

from __future__ import annotations

import argparse
import json
from typing import Any

from renderq.http_client import CoordinatorClient

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad input from the user: printed as one sentence, exit status 2."""


def make_client(args: argparse.Namespace) -> CoordinatorClient:
    """The client for --coordinator (with --token, when given); a malformed URL is a usage error."""
    try:
        return CoordinatorClient(args.coordinator, token=getattr(args, "token", None) or None)
    except ValueError as error:
        raise UsageError(str(error)) from None


def print_json(answer: Any) -> None:
    """Print an API answer as indented JSON."""
    print(json.dumps(answer, indent=2, sort_keys=True))
