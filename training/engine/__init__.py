"""Learning and evaluation on face embeddings and crops: plain Python over numpy, no Django.

``dataset`` splits enrolled faces, ``heads`` trains recognizers on frozen FaceNet embeddings,
``baselines`` holds the classic pixel-based recognizers, ``evaluation`` scores any of them the same
way, and ``export`` writes the embedder as TFLite for edge clients.
"""
