#!/usr/bin/env python
import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "facesite.settings")
    # Before TensorFlow loads: its C++ INFO/WARNING/ERROR lines (no CUDA driver on a CPU machine,
    # grappler's PredictCost warnings) are not actionable and read like failures. To see them, run
    # with TF_CPP_MIN_LOG_LEVEL=0.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
