"""Fine-tune Metis for a task: TTS, VC, TSE, SE, L2S or Omni, full or LoRA, with condition adapters
(the same job as `metis finetune`).

    python finetune.py task=se init=amphion/metis features=semantic feature_dim=1024 data=shards data.train_shards=...
    python finetune.py task=tse init=outputs/demo/export peft=lora peft.r=16
    python finetune.py experiment=demo_se [compare_scratch=true]     # offline demo on CPU (run python train.py first)
    python finetune.py experiment=base_vc_lora ...                   # published recipes: configs/experiment/base_*
    python finetune.py ... ckpt_path=last                            # resume outputs/<run_name>
    python finetune.py --cfg job                                     # print the resolved config
    python finetune.py --help                                        # the config groups and options
"""

import sys

from metis.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
