"""Fine-tune Metis for a task: TTS, VC, TSE, SE, L2S or Omni, full or LoRA, with condition adapters.

    python finetune.py task=se init=amphion/metis features=semantic feature_dim=1024 data=shards data.train_shards=...
    python finetune.py task=tse init=outputs/demo/export peft=lora peft.r=16
    python finetune.py experiment=demo_se [compare_scratch=true]     # offline demo on CPU (run python train.py first)
    python finetune.py experiment=base_vc_lora ...                   # published recipes: configs/experiment/base_*
    python finetune.py ... ckpt_path=last                            # resume outputs/<run_name>
    python finetune.py --cfg job                                     # print the resolved config
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="finetune")
def main(cfg: DictConfig) -> None:
    from metis.lightning.finetuning import finetune  # import after Hydra parsed the CLI (fast --help/--cfg)

    finetune(cfg)


if __name__ == "__main__":
    main()
