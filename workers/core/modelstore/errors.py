"""The one error type of the model store: a model folder, file or archive member is refused."""
from __future__ import annotations


class ModelFolderError(ValueError):
    """A model folder (or archive, or a file in it) is unusable or unsafe.

    `path` names the offending thing as the user knows it: a file relative to the model folder
    (``pytorch_model.bin``), an archive member (``../evil``), or a whole folder/archive path.
    `reason` says why, in words meant for the user.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason
