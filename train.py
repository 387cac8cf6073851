"""Pre-train Metis stage 1 or MaskGCT S2A.

    python train.py                                   # offline demo: tiny stage-1 model on the demo corpus, CPU
    python train.py experiment=metis_pretrain trainer=deepspeed_stage_2 data.train_shards='/data/emilia/{000000..004999}.tar'
    python train.py experiment=s2a_pretrain ...
    python train.py ckpt_path=last                    # resume the run in outputs/<run_name>
    python train.py --cfg job                         # print the resolved config
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    from metis.lightning.training import train  # import after Hydra parsed the CLI (fast --help/--cfg)

    train(cfg)


if __name__ == "__main__":
    main()
