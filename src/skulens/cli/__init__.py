"""The `skulens` command: thin adapters over the core, grouped by stage. Importing it imports no torch.

One grammar in every subcommand: the model is `-m/--model`, the data `--data`, the output `-o/--out`,
the number of results `-k/--top-k`. Exit codes: 0 success, 1 a run that failed, 2 a usage or input error,
3 the storage refused a write (a full or read-only disk or database).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys

from ._common import EXIT_FAILED, EXIT_STORAGE, EXIT_USAGE, UsageError, is_rank_zero, say

__all__ = ["build_parser", "main"]

EPILOG = ("exit codes: 0 success, 1 a run that failed (e.g. no image could be read), 2 a usage or input error, "
          "3 the storage refused a write (a full or read-only disk or database). "
          "Every command names the model -m/--model, the data --data, the output -o/--out.")


# An unknown or misspelt option whose name says it carries a secret (`--api-key S3CRET`, `--token=...`):
# argparse would echo the value in its error, onto a terminal, a CI log or a screen share.
_SECRET_OPTION = re.compile(r"(--?[A-Za-z0-9_-]*(?:key|secret|token|pass|auth|credential)[A-Za-z0-9_-]*)(=|\s+)"
                            r"(\S+)", re.IGNORECASE)  # a value may start with '-' (token_urlsafe): masked too


def redact_secrets(message: str) -> str:
    """`--api-key S3CRET` -> `--api-key ***` (and `--token=S3CRET` -> `--token=***`) in a usage error."""
    return _SECRET_OPTION.sub(lambda m: f"{m[1]}{m[2]}***", message)


class _Parser(argparse.ArgumentParser):
    """argparse, with option values that look like secrets left out of its usage errors (subcommands too:
    add_subparsers makes them of this class)."""

    def error(self, message: str):  # type: ignore[override]
        super().error(redact_secrets(message))


def build_parser() -> argparse.ArgumentParser:
    from . import deploy, detect, evaluate, inventory, predict, recommend, search, serve, tag, train

    p = _Parser(prog="skulens", description="Product image recognition with pretrained models.",
                                epilog=EPILOG)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, and tracebacks for input errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in (train, evaluate, predict, tag, detect, deploy, search, recommend, serve, inventory):
        stage.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if ns.verbose else logging.INFO, format="%(levelname)s %(message)s")
    if not ns.verbose:  # FAISS logs its loader at INFO, a missing AVX-512 build as a ModuleNotFoundError: noise
        logging.getLogger("faiss").setLevel(logging.WARNING)
        # Milvus Lite's in-process server: gRPC logs a traceback for each RPC it does not implement (pymilvus asks
        # for timestamps on every insert), and milvus_lite one for a failed start, which the index's own error
        # says in a line (another process holding the file); -v shows them
        logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
        logging.getLogger("milvus_lite").setLevel(logging.CRITICAL)
        if not is_rank_zero():
            # Under torchrun rank 0 speaks for the run: the other ranks' infos and warnings would repeat its own
            # N times (the data checks, unused settings). Their errors still show; -v shows everything.
            logging.getLogger().setLevel(logging.ERROR)
    if getattr(ns, "quiet", False) and not ns.verbose:
        # -q: no progress bars or INFO lines from the text libraries either (loading MiniLM: "Loading weights",
        # "Load pretrained SentenceTransformer"); read when huggingface_hub is imported, so set before it is
        import os

        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
    try:
        return int(ns.func(ns) or 0)
    except UsageError as e:
        say(f"skulens {ns.command}: {e}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        say("skulens: interrupted")
        return 130
    except BrokenPipeError:
        if not _stdout_reader_gone():  # another pipe or socket broke: not the reader of our results leaving
            raise
        import os

        # `skulens search ... | head`: the reader has what it wanted; no traceback. stdout's last buffered bytes
        # would fail again at exit ("Exception ignored ..."): send them nowhere
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:
        from ..config import ConfigError
        from ._errors import is_run_failure, is_user_error, storage_failure

        failure = storage_failure(e)
        if failure is not None and not ns.verbose:  # the machine's to fix, not the input's
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__  # a driver's may run on
            say(f"skulens: storage {'full' if failure == 'full' else 'unavailable'}: {first}")
            return EXIT_STORAGE
        if is_run_failure(e) and not ns.verbose:
            say(f"skulens {ns.command}: {e}")
            return EXIT_FAILED
        if isinstance(e, ConfigError):
            say(f"skulens: config error: {e}")
            return EXIT_USAGE
        if is_user_error(e) and not ns.verbose:
            kind = next(c.__name__ for c in type(e).__mro__ if not c.__name__.startswith("_"))  # no private names
            say(f"skulens: {kind}: {e}")
            return EXIT_USAGE
        raise




def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reading end was closed (poll reports an error on it)."""
    import select

    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no descriptor (a StringIO, a capture): not ours to hide
        return False
