"""Pre-train Metis stage 1 or MaskGCT S2A (the same job as `metis train`).

    python train.py                                   # offline demo: tiny stage-1 model on the demo corpus, CPU
    python train.py experiment=metis_pretrain trainer=deepspeed_stage_2 data.train_shards='/data/emilia/{000000..004999}.tar'
    python train.py experiment=s2a_pretrain ...
    python train.py ckpt_path=last                    # resume the run in outputs/<run_name>
    python train.py --cfg job                         # print the resolved config
    python train.py --help                            # the config groups and options
"""

import sys

from metis.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
