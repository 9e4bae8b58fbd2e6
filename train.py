"""Train / validate / test Florence-2 with Lightning.

python train.py fit -c configs/demo.yaml
python train.py fit -c configs/pretrain_base_384.yaml --trainer.devices=8 --trainer.strategy=deepspeed_stage_2
"""

from f2lightning.training.cli import main

if __name__ == "__main__":
    main()
