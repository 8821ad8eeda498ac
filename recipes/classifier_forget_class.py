"""Classifier unlearning: train the original and the retrain oracle, unlearn with every method, evaluate.

The body lives in the package (``rklu_llm.scripts.classifier``); see ``python recipes/classifier_forget_class.py
--help`` and that module's docstring.

    python recipes/classifier_forget_class.py --dataset fashion_mnist --data_dir data/fashion-mnist \
        --model cnn --forget_classes 0 --output_dir runs/fmnist_class0
    python recipes/classifier_forget_class.py --dataset austen --data_dir data/books --model bert \
        --forget_classes 0 --output_dir runs/austen_emma
"""

from rklu_llm.scripts.classifier import main

if __name__ == "__main__":
    main()
