"""What every `renderq` command shares: exit statuses, the usage error, the coordinator client and JSON output."""

from __future__ import annotations

import argparse
import http.client
import json
from typing import Any

from renderq.http_client import CoordinatorClient, CoordinatorError
from renderq.progress import printable, printable_answer

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad input from the user: printed as one sentence, exit status 2."""


class TerminalClient(CoordinatorClient):
    """The commands' client: every text in the coordinator's answers and refusals is made printable as it arrives.

    Names, labels, errors and logs come from other people (and a coordinator may be hostile); cleaning them at the
    door means no printing path can pass an escape sequence to the user's terminal.
    """

    def _json_call(self, *args: Any, **kwargs: Any) -> Any:
        return printable_answer(super()._json_call(*args, **kwargs))

    def _refusal(self, response: http.client.HTTPResponse, lease_fenced: bool = False) -> CoordinatorError:
        error = super()._refusal(response, lease_fenced)
        error.message = printable(error.message)
        return error


def make_client(args: argparse.Namespace) -> CoordinatorClient:
    """The client for --coordinator (with --token, when given); a malformed URL is a usage error."""
    try:
        return TerminalClient(args.coordinator, token=getattr(args, "token", None) or None)
    except ValueError as error:
        raise UsageError(str(error)) from None


def print_json(answer: Any) -> None:
    """Print an API answer as indented JSON."""
    print(json.dumps(answer, indent=2, sort_keys=True))
