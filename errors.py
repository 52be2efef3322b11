"""User-facing errors: one line, naming the ONNX node or tensor and the reason."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class TinyDeployError(Exception):
    """An error caused by the user's input (model, options); the CLI prints it and exits with code 2."""

    def __init__(self, reason: str, *, node: str | None = None, tensor: str | None = None,
                 details: str = "") -> None:
        self.reason = reason
        self.node = node
        self.tensor = tensor
        self.details = details      # more lines (a compiler log), shown with -v
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = []
        if self.node:
            where.append(f"node '{self.node}'")
        if self.tensor:
            where.append(f"tensor '{self.tensor}'")
        prefix = (" ".join(where) + ": ") if where else ""
        return " ".join((prefix + self.reason).split())


class UnsupportedModelError(TinyDeployError):
    """The model uses something tinydeploy cannot compile (op, dynamic shape, float-only graph...)."""


class ModelFileError(TinyDeployError):
    """The file is missing, truncated or not an ONNX model."""


class OverflowRiskError(TinyDeployError):
    """An integer accumulator could leave its type's range for some admissible input."""


#: what malformed model data raises deep inside numpy/onnx/our shape and range code
MALFORMED = (ValueError, KeyError, IndexError, TypeError, AttributeError, ArithmeticError, AssertionError,
             RuntimeError)


@contextlib.contextmanager
def node_context(node: str, op: str, stage: str) -> Iterator[None]:
    """Turn an error raised while `stage` handles one node into one line naming that ONNX node (a malformed or
    unsupported node, e.g. an attribute of the wrong type); the original stays chained for -v."""
    try:
        yield
    except TinyDeployError:
        raise
    except MALFORMED as exc:
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise UnsupportedModelError(f"{stage} failed on this {op} ({type(exc).__name__}"
                                    f"{': ' + text if text else ''}); the node's attributes or operands are "
                                    "malformed or unsupported", node=node) from exc
