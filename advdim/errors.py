"""The exceptions of advdim.  Every user-facing precondition failure is an :class:`AdvdimError`;
the CLI prints its one-line message and exits with status 2."""


class AdvdimError(ValueError):
    """Bad input: a malformed architecture, an invalid norm order, a missing dataset, ..."""


class SpecError(AdvdimError):
    """An architecture spec or family that is inconsistent; the message names the layer at fault."""


class HypothesisError(AdvdimError):
    """A derivation was asked for a network on which the hypotheses it needs do not hold."""


class DataError(AdvdimError):
    """A dataset is missing or malformed; the message says how to get it."""


class StoreError(AdvdimError):
    """The run store cannot be opened or a record does not match its configuration."""


class Interrupted(Exception):  # noqa: N818 - a user's interrupt, not an error of theirs
    """The user interrupted a command (Ctrl-C, SIGTERM).  The message says what was kept, e.g.
    ``"interrupted: 12 cells stored; rerun with --resume"``; the CLI prints it and exits 130."""


#: the exit codes of the ``advdim`` command (documented in docs/user-guide.md)
EXIT_OK = 0
EXIT_FAILED = 1  # a judged claim failed (verify, measure)
EXIT_BAD_INPUT = 2  # bad input or an environment fault: one line on stderr
EXIT_INCONCLUSIVE = 3  # no judged claim failed, but some could not be told apart at this budget
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM
