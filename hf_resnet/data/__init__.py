"""The data side of a run: read a Hub dataset or image folders (streamed or not), decode and transform images,
attach them to the splits lazily, record the images that cannot be read, and audit a folder before training.

    loading.py     splits, columns, labels (a Hub dataset, folders, streams)   folders.py  an image folder's files
    images.py      decode one file (or its bytes), bad-image reasons           transforms.py  train / eval pipelines
    inputs.py      each split's per-example transform, label remap             skips.py    unreadable images, listed
    gpu_decode.py  JPEGs decoded in batches on the GPU (nvJPEG)                audit.py    `hf-resnet audit`
    imagenet.py    ILSVRC-2012 synset ids, Kaggle's CSV-labelled flat val
"""
