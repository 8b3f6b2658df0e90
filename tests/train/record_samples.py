"""``python record_samples.py RECORD eigenarch ARGS...`` (alone or under torchrun): runs the
command and writes ``RECORD.rank<N>.json``, the training samples this rank read: one
``[iteration, index]`` per image, ``index`` the training set's own (an ImageFolder's item
index, a COCO set's image id)."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

from torchvision import datasets

from eigenarch.data.coco import CocoDetection
from eigenarch.distributed import launch_rank
from eigenarch.train.loop import IterationBatches

RECORD: list[list[int]] = []
_iteration: list[int] = []  # the iteration whose batch is being read, while it is


def _reading_batch(getitem: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(getitem)
    def read(self: IterationBatches, k: int) -> Any:
        _iteration.append(self.start + k)
        try:
            return getitem(self, k)
        finally:
            _iteration.pop()

    return read


def _recording(getitem: Callable[..., Any], key: Callable[[Any, int], int]) -> Callable[..., Any]:
    @functools.wraps(getitem)
    def read(self: Any, index: int) -> Any:
        if _iteration:  # a training batch's image, not an evaluation's
            RECORD.append([_iteration[-1], key(self, index)])
        return getitem(self, index)

    return read


def main(record: str, args: list[str]) -> None:
    from eigenarch.cli.app import main as cli

    IterationBatches.__getitem__ = _reading_batch(IterationBatches.__getitem__)
    datasets.ImageFolder.__getitem__ = _recording(
        datasets.ImageFolder.__getitem__, lambda self, index: index
    )
    CocoDetection.__getitem__ = _recording(
        CocoDetection.__getitem__, lambda self, index: self.image_ids[index]
    )
    try:
        cli(args)
    finally:  # (the CLI has left the process group: the launcher's rank)
        with open(f"{record}.rank{launch_rank()}.json", "w") as file:
            json.dump(RECORD, file)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
