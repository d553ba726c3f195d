"""Fine-tune a ResNet with a YAML recipe: a thin wrapper around `hf_resnet.run`, kept for `accelerate launch`.

    python recipes/finetune.py --config smoke/digits_smoke                      # offline, a shipped recipe
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/finetune.py \
        --config resnet50/imagefolder_full --train_dir data/train --validation_dir data/val

The same run is `hf-resnet train --config ...` once the package is installed. `--config` takes a YAML path or
the name of a recipe shipped in `hf_resnet/recipes/`; `--field value` overrides any field; `--help` lists them.
"""

import sys

from hf_resnet.cli import train

if __name__ == "__main__":
    sys.exit(train())
