"""`python -m worker ...`: the same as `renderq worker ...`."""

import argparse
import sys

from worker.command_line import add_arguments, main

parser = argparse.ArgumentParser(prog="python -m worker", description="Run a RenderQ worker.")
add_arguments(parser)
sys.exit(main(parser.parse_args()))
