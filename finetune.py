"""Entry point for finetuneing (see the issue tracker): not built yet."""

import sys

if __name__ == "__main__":
    sys.exit("finetune.py is not built yet: this job lands with its issue. Use train.py for pre-training.")
