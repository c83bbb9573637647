"""Recognizers on frozen FaceNet embeddings: nearest neighbour, a softmax head, a triplet-loss
adapter and a Siamese verification head.

Each one is fitted on a ``FaceSet`` and turns probe embeddings (P, 128) into a score matrix (P, C)
over ``classes`` (person ids, sorted), higher = more likely, as ``evaluation.evaluate`` expects.
The Keras models are small and trained on CPU in seconds; their weights are read back into numpy so
that inference needs no TensorFlow graph.
"""

from __future__ import annotations

import numpy as np

from .dataset import FaceSet


def per_class_max(similarity: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(P, N) scores against N gallery items labelled ``labels`` -> (P, C): each class's best."""
    out = np.full((similarity.shape[0], len(classes)), -np.inf, np.float64)
    index = np.searchsorted(classes, labels)
    np.maximum.at(out.T, index, similarity.T)
    return out


class NearestNeighbour:
    """Cosine similarity to each person's closest enrolled embedding (what the Gallery does)."""

    name = "nearest_neighbour"

    def fit(self, faces: FaceSet) -> NearestNeighbour:
        self.classes = np.unique(faces.labels)
        self._embeddings, self._labels = faces.embeddings, faces.labels
        return self

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        return per_class_max(np.asarray(embeddings) @ self._embeddings.T, self._labels, self.classes)


def _seed(seed: int) -> None:
    import keras

    keras.utils.set_random_seed(seed)


def fit(
    model,
    loss_fn,
    x,
    y,
    epochs: int,
    learning_rate: float,
    batch_size: int = 256,
    patience: int = 15,
    seed: int = 0,
    weights=None,
) -> int:
    """Adam on ``loss_fn(y, model(x), weights)`` plus the model's regularisation losses, stopping
    when the training loss has not improved by 1e-4 for ``patience`` epochs. Returns epochs run.

    A compiled step in a plain loop: ``model.fit``'s per-epoch machinery costs ~0.1-0.25 s on a
    busy CPU, which is most of the time for a few hundred epochs of a tiny head."""
    import keras
    import tensorflow as tf

    optimizer = keras.optimizers.Adam(learning_rate)
    x = np.asarray(x, np.float32)
    y = np.asarray(y)
    w = np.ones(len(x), np.float32) if weights is None else np.asarray(weights, np.float32)

    @tf.function(reduce_retracing=True)
    def step(xb, yb, wb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True), wb)
            if model.losses:
                loss = loss + tf.add_n(model.losses)
        grads = tape.gradient(loss, model.trainable_weights)
        optimizer.apply(grads, model.trainable_weights)
        return loss

    rng = np.random.default_rng(seed)
    best, waited = np.inf, 0
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(x))
        total = 0.0
        for start in range(0, len(x), batch_size):
            batch = order[start : start + batch_size]
            total += float(step(x[batch], y[batch], w[batch])) * len(batch)
        loss = total / len(x)
        if loss < best - 1e-4:
            best, waited = loss, 0
        else:
            waited += 1
            if waited >= patience:
                return epoch
    return epochs


class SoftmaxHead:
    """Softmax over the enrolled people on the embedding: Dense(C) with L2 weight decay and
    dropout on the input, trained with Adam and early stopping on the training loss (the held-out
    part is the test set, so it never steers training). Scores are class probabilities.

    Defaults from 151 LFW + fixture people (315 training faces): L2 1e-3 / lr 0.01 underfit
    (top-1 0.79 held-out); 1e-5 / 0.1 / dropout 0.1 reach 0.99, against nearest neighbour's 0.99."""

    name = "softmax_head"

    def __init__(self, l2: float = 1e-5, dropout: float = 0.1, epochs: int = 300, learning_rate: float = 0.1, seed: int = 0):
        self.l2, self.dropout, self.epochs, self.learning_rate, self.seed = l2, dropout, epochs, learning_rate, seed
        self.epochs_run = 0

    def fit(self, faces: FaceSet) -> SoftmaxHead:
        import keras

        _seed(self.seed)
        self.classes = np.unique(faces.labels)
        y = np.searchsorted(self.classes, faces.labels)
        model = keras.Sequential(
            [
                keras.Input((faces.embeddings.shape[1],)),
                keras.layers.Dropout(self.dropout),
                keras.layers.Dense(len(self.classes), activation="softmax", kernel_regularizer=keras.regularizers.l2(self.l2)),
            ]
        )
        import tensorflow as tf

        def loss(labels, probabilities, weights):
            return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, probabilities) * weights)

        self.epochs_run = fit(model, loss, faces.embeddings, y.astype(np.int64), self.epochs, self.learning_rate, seed=self.seed)
        kernel, bias = model.layers[-1].get_weights()
        self.kernel, self.bias = kernel.astype(np.float32), bias.astype(np.float32)
        return self

    @classmethod
    def from_arrays(cls, kernel: np.ndarray, bias: np.ndarray, classes: np.ndarray) -> SoftmaxHead:
        head = cls()
        head.kernel, head.bias, head.classes = np.asarray(kernel, np.float32), np.asarray(bias, np.float32), np.asarray(classes)
        return head

    def arrays(self) -> dict[str, np.ndarray]:
        return {"kernel": self.kernel, "bias": self.bias, "classes": self.classes}

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        logits = np.asarray(embeddings, np.float32) @ self.kernel + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)


def triplet_semihard_loss(labels, embeddings, margin: float = 0.2):
    """Triplet loss with semi-hard negative mining in the batch (FaceNet, Schroff et al. 2015).

    For every anchor-positive pair the negative is the closest one still farther than the positive;
    when there is none, the farthest negative. ``embeddings`` (B, D) L2-normalised, squared distances."""
    import tensorflow as tf

    labels = tf.reshape(tf.cast(labels, tf.int64), [-1])
    dot = tf.matmul(embeddings, embeddings, transpose_b=True)
    sq = tf.linalg.diag_part(dot)
    dist = tf.maximum(sq[:, None] - 2.0 * dot + sq[None, :], 0.0)  # (B, B)
    same = tf.equal(labels[:, None], labels[None, :])
    different = tf.logical_not(same)
    d_ap = dist[:, :, None]  # (B, B, 1): anchor a, positive p
    d_an = dist[:, None, :]  # (B, 1, B): anchor a, negative n
    semihard = tf.logical_and(different[:, None, :], d_an > d_ap)  # (B, B, B)
    big = tf.reduce_max(dist) + 1.0
    closest_semihard = tf.reduce_min(tf.where(semihard, d_an, big), axis=2)
    farthest_negative = tf.reduce_max(tf.where(different, dist, 0.0), axis=1, keepdims=True)  # (B, 1)
    negative = tf.where(tf.reduce_any(semihard, axis=2), closest_semihard, farthest_negative)
    batch = tf.shape(labels)[0]
    positive_pairs = tf.logical_and(same, tf.logical_not(tf.eye(batch, dtype=tf.bool)))
    losses = tf.maximum(dist - negative + margin, 0.0) * tf.cast(positive_pairs, tf.float32)
    return tf.reduce_sum(losses) / tf.maximum(tf.reduce_sum(tf.cast(positive_pairs, tf.float32)), 1.0)


class TripletAdapter:
    """A linear embedding adapter (128 -> 128, then L2-normalise) trained with semi-hard triplet
    loss, starting from the identity so that it begins where FaceNet is; then nearest neighbour
    in the adapted space. Needs at least one person with two training images."""

    name = "triplet_adapter"

    def __init__(self, margin: float = 0.2, epochs: int = 40, learning_rate: float = 1e-3, batch_size: int = 128, seed: int = 0):
        self.margin, self.epochs, self.learning_rate, self.batch_size, self.seed = margin, epochs, learning_rate, batch_size, seed

    def fit(self, faces: FaceSet) -> TripletAdapter:
        import keras

        _seed(self.seed)
        dim = faces.embeddings.shape[1]
        self.classes = np.unique(faces.labels)
        model = keras.Sequential(
            [
                keras.Input((dim,)),
                keras.layers.Dense(dim, kernel_initializer="identity", bias_initializer="zeros"),
                keras.layers.UnitNormalization(),
            ]
        )
        margin = self.margin
        _, counts = np.unique(faces.labels, return_counts=True)
        if (counts >= 2).any():
            # people-balanced batches would be better with many people; shuffled batches suffice here
            fit(
                model,
                lambda labels, z, _: triplet_semihard_loss(labels, z, margin),
                faces.embeddings,
                faces.labels.astype(np.int64),
                self.epochs,
                self.learning_rate,
                batch_size=self.batch_size,
                patience=self.epochs,  # the semi-hard loss is noisy batch to batch: run every epoch
                seed=self.seed,
            )
        self.kernel, self.bias = (w.astype(np.float32) for w in model.layers[0].get_weights())
        self._gallery = self.transform(faces.embeddings)
        self._labels = faces.labels
        return self

    def transform(self, embeddings: np.ndarray) -> np.ndarray:
        z = np.asarray(embeddings, np.float32) @ self.kernel + self.bias
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        return per_class_max(self.transform(embeddings) @ self._gallery.T, self._labels, self.classes)


class SiameseHead:
    """Verification head: |e1 - e2| -> Dense(16, relu) -> Dense(1, sigmoid) = P(same person),
    trained on all genuine training pairs and as many random impostor pairs. A probe's score for a
    person is the highest P(same) against that person's training embeddings."""

    name = "siamese_head"

    def __init__(self, hidden: int = 16, epochs: int = 100, learning_rate: float = 0.01, seed: int = 0, max_pairs: int = 20000):
        self.hidden, self.epochs, self.learning_rate, self.seed, self.max_pairs = hidden, epochs, learning_rate, seed, max_pairs

    def fit(self, faces: FaceSet) -> SiameseHead:
        import keras

        _seed(self.seed)
        rng = np.random.default_rng(self.seed)
        self.classes = np.unique(faces.labels)
        left, right = np.triu_indices(len(faces), k=1)
        same = faces.labels[left] == faces.labels[right]
        genuine = np.flatnonzero(same)
        impostor = np.flatnonzero(~same)
        n = min(max(len(genuine), 1), self.max_pairs // 2)
        genuine = rng.choice(genuine, size=min(n, len(genuine)), replace=False) if len(genuine) else genuine
        impostor = rng.choice(impostor, size=min(max(n, len(genuine)), len(impostor)), replace=False)
        pairs = np.r_[genuine, impostor]
        x = np.abs(faces.embeddings[left[pairs]] - faces.embeddings[right[pairs]])
        y = np.r_[np.ones(len(genuine)), np.zeros(len(impostor))].astype(np.float32)
        model = keras.Sequential(
            [
                keras.Input((faces.embeddings.shape[1],)),
                keras.layers.Dense(self.hidden, activation="relu", kernel_regularizer=keras.regularizers.l2(1e-4)),
                keras.layers.Dense(1, activation="sigmoid"),
            ]
        )
        import tensorflow as tf

        # balanced classes: weight genuine pairs up when they are rarer than impostors
        weight = np.where(y == 1, max(1.0, len(impostor) / max(len(genuine), 1)), 1.0).astype(np.float32)

        def loss(labels, p, weights):
            return tf.reduce_mean(keras.losses.binary_crossentropy(labels[:, None], p) * weights)

        fit(model, loss, x, y, self.epochs, self.learning_rate, patience=10, seed=self.seed, weights=weight)
        self.pairs_used = {"genuine": int(len(genuine)), "impostor": int(len(impostor))}
        self._weights = [w.astype(np.float32) for w in model.get_weights()]
        self._embeddings, self._labels = faces.embeddings, faces.labels
        return self

    def same_probability(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(P, D) and (N, D) -> (P, N) P(same person)."""
        w1, b1, w2, b2 = self._weights
        diff = np.abs(np.asarray(a, np.float32)[:, None, :] - np.asarray(b, np.float32)[None, :, :])
        hidden = np.maximum(diff @ w1 + b1, 0.0)
        return (1.0 / (1.0 + np.exp(-(hidden @ w2 + b2))))[..., 0]

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(embeddings), 256):  # (P, N, D) in slices to bound memory
            out.append(
                per_class_max(
                    self.same_probability(embeddings[start : start + 256], self._embeddings), self._labels, self.classes
                )
            )
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)))
