"""``gohd-tfds build``: TFDS's own ``tfds build`` command, without TensorFlow.

tensorflow-datasets 4.9.10's ``tfds`` entry point imports its ``convert_format``
command at start-up, which needs TensorFlow; the ``build`` command itself does
not. This wrapper runs that same build command (same flags, see ``--help``), so
ArrayRecord datasets build in a TensorFlow-free environment::

    gohd-tfds build data_pipelines/tfds/gohd_synthetic --config=tiny --data_dir=DIR
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "build":
        print("usage: gohd-tfds build DATASET [--config=NAME] [--data_dir=DIR] [tfds build flags...]\n"
              "       gohd-tfds build --help   (all flags of `tfds build`)", file=sys.stderr)
        return 2
    import simple_parsing
    from absl import flags
    from tensorflow_datasets.scripts.cli import build

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    rest = argv[1:]
    if not any(a.startswith("--file_format") for a in rest):
        rest.append("--file_format=array_record")  # the only format readable without TensorFlow
    args = simple_parsing.parse(build.Args, args=rest, prog="gohd-tfds build")
    args.execute()
    return 0


if __name__ == "__main__":
    sys.exit(main())
