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
