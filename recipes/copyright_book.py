"""Copyright unlearning on a book: fine-tune the model until it reproduces the book (Austen's Pride and Prejudice by
default), then unlearn it with RKL-U (teacher alpha 4) and the baselines, evaluating each on continuation BLEU /
ROUGE-L (the book and a never-seen control novel), WikiText perplexity and lm-eval accuracy.

    python recipes/copyright_book.py --books_dir data/books --wikitext_dir data/wikitext \
        --general_data_dir data/general --retain_text emma.txt --output_dir runs/book

The body lives in the package (``rklu_llm.scripts.copyright``); see ``python recipes/copyright_book.py --help``.
"""

from rklu_llm.scripts.copyright import main

if __name__ == "__main__":
    main()
