"""Settings for facesite, read from environment variables.

Without any variables set, the embedded setup runs on one machine: SQLite, the django-q ORM broker
and the in-memory channel layer. DATABASE_URL and REDIS_URL switch to PostgreSQL and Redis.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return default if value in (None, "") else float(value)


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    return default if value is None else [item.strip() for item in value.split(",") if item.strip()]


DEBUG = env_bool("DEBUG", True)
# The development key only works with DEBUG on; production must set SECRET_KEY.
SECRET_KEY = env_str("SECRET_KEY") or ("dev-only-insecure-key" if DEBUG else "")
if not SECRET_KEY:
    raise RuntimeError("SECRET_KEY must be set when DEBUG is off")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and ReDoc as static files (the docs work offline)
    "django_q",
    "channels",
    "people",
    "recognition",
    "checkin",
    "visitors",
    "training",
    "security",
    "privacy",
    "integrations",
    "axes",
]

MIDDLEWARE = [
    # First: an oversized body is refused before anything reads it (facesite/limits.py).
    "facesite.limits.RequestSizeLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a locked-out login into facesite.lockout's response.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "facesite.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
WSGI_APPLICATION = "facesite.wsgi.application"
ASGI_APPLICATION = "facesite.asgi.application"


# Background tasks and web requests share the SQLite file: wait for a lock instead of failing.
# WAL with synchronous=NORMAL: a commit no longer waits for an fsync (the audit row of every
# recognize call cost ~14 ms); the database cannot be corrupted by a crash, at worst the last commits
# before a power cut are lost.
SQLITE_OPTIONS = {
    "timeout": 20,
    "transaction_mode": "IMMEDIATE",
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
}


def _database_from_url(url: str) -> dict:
    """A DATABASES entry from a URL: sqlite:///relative.db, sqlite:////absolute.db, postgres(ql)://..."""
    import dj_database_url

    try:
        config = dj_database_url.parse(url)
    except ValueError as exc:
        raise RuntimeError(f"DATABASE_URL is not usable: {exc}") from exc
    engine = config["ENGINE"]
    if engine == "django.db.backends.sqlite3":
        config["OPTIONS"] = {**SQLITE_OPTIONS, **config.get("OPTIONS", {})}
        return config
    if engine != "django.db.backends.postgresql":
        scheme = url.split(":", 1)[0]
        raise RuntimeError(f"DATABASE_URL scheme {scheme!r} is not supported (use sqlite:/// or postgresql://)")
    config.update(
        {
            # 0: close each request's connection when it ends. Under ASGI every request's synchronous
            # code runs in a thread of its own, so persistent connections pile up one per thread:
            # measured 96 open connections (PostgreSQL's limit is 100) after 20 s of 16 concurrent
            # clients with 60 s, and "too many clients" 503s in CI; 16 at most with 0.
            "CONN_MAX_AGE": env_int("DB_CONN_MAX_AGE", 0),
            # A connection the server dropped (restart, failover) is replaced on the next request.
            "CONN_HEALTH_CHECKS": True,
            "TEST": {"NAME": env_str("DATABASE_TEST_NAME") or None},
        }
    )
    config["OPTIONS"] = {"connect_timeout": env_int("DB_CONNECT_TIMEOUT", 5), **config.get("OPTIONS", {})}
    return config


DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    DATABASES = {"default": _database_from_url(DATABASE_URL)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": Path(env_str("SQLITE_PATH", str(BASE_DIR / "var" / "db.sqlite3"))),
            "OPTIONS": dict(SQLITE_OPTIONS),
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# django-axes first: it refuses a locked-out username or address before any password is checked.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "var" / "staticfiles")))
MEDIA_URL = "media/"
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(BASE_DIR / "var" / "media")))

# Uploads: refused above these limits with a clear 4xx (see recognition.engine.images).
FACE_UPLOAD_MAX_BYTES = env_int("FACE_UPLOAD_MAX_BYTES", 10 * 1024 * 1024)
FACE_UPLOAD_MAX_PIXELS = env_int("FACE_UPLOAD_MAX_PIXELS", 40_000_000)
DATA_UPLOAD_MAX_MEMORY_SIZE = FACE_UPLOAD_MAX_BYTES * 2 + 1024 * 1024
# Form fields and files in one request (Django's defaults, made explicit): past them a request is
# refused with 400 too_many_fields / too_many_files (facesite/api.py), not a 500.
DATA_UPLOAD_MAX_NUMBER_FIELDS = env_int("DATA_UPLOAD_MAX_NUMBER_FIELDS", 1000)
DATA_UPLOAD_MAX_NUMBER_FILES = env_int("DATA_UPLOAD_MAX_NUMBER_FILES", 100)
# A declared Content-Length above this is refused with 413 before the body is read, on any route
# (facesite/limits.py): the largest legitimate request is two photos at FACE_UPLOAD_MAX_BYTES each.
REQUEST_MAX_BYTES = env_int("REQUEST_MAX_BYTES", DATA_UPLOAD_MAX_MEMORY_SIZE + 1024 * 1024)
FILE_UPLOAD_MAX_MEMORY_SIZE = FACE_UPLOAD_MAX_BYTES + 1024 * 1024
# A photo whose processing was queued this long ago and is still pending, while the broker holds no
# waiting task, is taken as lost (e.g. Redis restarted, a worker was killed) and queued again by
# people.tasks.requeue_pending. Generous: a big import's backlog must never be queued twice.
ENROLLMENT_REQUEUE_AFTER_SECONDS = env_int("ENROLLMENT_REQUEUE_AFTER_SECONDS", 15 * 60)
# import_embeddings refuses a file with more faces (its arrays are checked before they are read).
FACE_IMPORT_MAX_FACES = env_int("FACE_IMPORT_MAX_FACES", 2_000_000)

# The face pipeline. Thresholds are cosine similarities of L2-normalised FaceNet embeddings; how
# the defaults were chosen on LFW is in the README ("How the threshold was chosen").
FACE_WEIGHTS_PATH = env_str("FACE_WEIGHTS_PATH") or None
# The embedder the site wants: "facenet" (FaceNet alone, 128-d) or "facenet+dlib" (FaceNet fused with
# dlib's ResNet descriptor, 256-d; recognition/engine/fused.py); "facenet-mirrored" is a cheap second
# embedder for testing switches. The embedder SERVED is the database's active record
# (recognition.models.EmbedderSwitch): when this setting names another one, a background switch
# re-embeds every enrolled face, evaluates old and new side by side and switches only if the new one
# is not worse (recognition/embedder_switch.py; admin "Embedder switches", `manage.py switch_embedder`).
# A new site serves this setting from the start. The fused
# embedder's cosine weight and thresholds come from FACE_FUSION_CALIBRATION (`manage.py fit_fusion`,
# LFW's training folds); FACE_FUSED_*_THRESHOLD / _MARGIN override them. Why the default: BENCHMARKS.md,
# "Serving the fused embedder".
FACE_EMBEDDER = env_str("FACE_EMBEDDER", "facenet")
FACE_FUSION_CALIBRATION = env_str("FACE_FUSION_CALIBRATION", str(BASE_DIR / "recognition" / "data" / "fusion_facenet_dlib.json"))
FACE_FUSED_MATCH_THRESHOLD = env_float("FACE_FUSED_MATCH_THRESHOLD", 0.0) if env_str("FACE_FUSED_MATCH_THRESHOLD") else None
FACE_FUSED_VERIFY_THRESHOLD = env_float("FACE_FUSED_VERIFY_THRESHOLD", 0.0) if env_str("FACE_FUSED_VERIFY_THRESHOLD") else None
FACE_FUSED_MISLABEL_MARGIN = env_float("FACE_FUSED_MISLABEL_MARGIN", 0.0) if env_str("FACE_FUSED_MISLABEL_MARGIN") else None
FACE_MATCH_THRESHOLD = env_float("FACE_MATCH_THRESHOLD", 0.55)
# The mirrored FaceNet's per-pair match threshold (default: FaceNet's; the same network on the same crops).
FACE_MIRRORED_MATCH_THRESHOLD = (
    env_float("FACE_MIRRORED_MATCH_THRESHOLD", 0.0) if env_str("FACE_MIRRORED_MATCH_THRESHOLD") else None
)
# An embedder switch: faces embedded and committed per batch, and how long a running switch may go
# without a progress report before it counts as dead and is resumed.
EMBEDDER_SWITCH_BATCH = env_int("EMBEDDER_SWITCH_BATCH", 32)
EMBEDDER_SWITCH_STALE_SECONDS = env_int("EMBEDDER_SWITCH_STALE_SECONDS", 900)
# The evaluation of a switch searches at most this many enrolled faces: past it, a fixed-seed sample of
# whole people, chosen before any template is read, so its memory is bounded (20,000 faces: ~30 MB of
# both embedders' templates and ~0.4 GB of score blocks, where all of 1M faces would be ~1.5 GB of templates).
EMBEDDER_SWITCH_EVAL_MAX_FACES = env_int("EMBEDDER_SWITCH_EVAL_MAX_FACES", 20000)
# The face region kept at enrollment for re-embedding once the photo is gone: the box widened by this
# fraction of its side on every side, scaled down to at most this many pixels a side.
FACE_REGION_MARGIN = env_float("FACE_REGION_MARGIN", 0.6)
FACE_REGION_MAX_SIDE = env_int("FACE_REGION_MAX_SIDE", 400)
FACE_VERIFY_THRESHOLD = env_float("FACE_VERIFY_THRESHOLD", 0.42)
# Open set per search (recognition/engine/open_set.py): the threshold in force is raised with the
# gallery's size so that a stranger's BEST score over every enrolled face reaches it in at most this
# share of searches; FACE_MATCH_THRESHOLD (or a version's calibrated one) is its floor. Calibrated on
# impostor score tails: LFW strangers (OPEN_SET_LFW_TAIL, made by `manage.py calibrate_open_set`) and
# the site's own people (recorded by each training run).
OPEN_SET_FAR_PER_SEARCH = env_float("OPEN_SET_FAR_PER_SEARCH", 0.01)
# A training run records the site's own impostor tail from at most this many faces (a fixed-seed sample).
OPEN_SET_SITE_MAX_FACES = env_int("OPEN_SET_SITE_MAX_FACES", 3000)
# ... when they give at least this many pairs of faces of different people (fewer say little about the tail).
OPEN_SET_SITE_MIN_PAIRS = env_int("OPEN_SET_SITE_MIN_PAIRS", 1000)
# One tail per embedder (each holds one embedder's scores: `calibrate_open_set --embedder KIND`, default
# the served one); the served embedder's is used, a switch's target's in the switch's evaluation.
OPEN_SET_LFW_TAIL = env_str("OPEN_SET_LFW_TAIL", str(BASE_DIR / "recognition" / "data" / "lfw_impostor_tail.json"))
OPEN_SET_LFW_TAIL_FUSED = env_str(
    "OPEN_SET_LFW_TAIL_FUSED", str(BASE_DIR / "recognition" / "data" / "lfw_impostor_tail_fused.json")
)
FACE_TOP_K = env_int("FACE_TOP_K", 5)
# The outlier review (recognition/outliers.py): a gallery face whose best similarity to its person's
# other faces is below this is listed for staff. Unset: the calibrated match threshold in force.
FACE_OUTLIER_BOUND = env_float("FACE_OUTLIER_BOUND", 0.0) if env_str("FACE_OUTLIER_BOUND") else None
# The site-wide outlier scan runs as a background task (checkin/outlier_scan.py); a scan still
# "running" this long after it was asked for is failed (its worker died), so staff can ask again.
OUTLIER_SCAN_STALE_SECONDS = env_int("OUTLIER_SCAN_STALE_SECONDS", 3 * 3600)
# A site-wide outlier scan asked for daily by the schedule "checkin: outlier scan" when the gallery
# changed since the last one (0: only when staff ask).
OUTLIER_SCAN_DAILY = env_bool("OUTLIER_SCAN_DAILY", True)
FACE_DETECT_MAX_SIDE = env_int("FACE_DETECT_MAX_SIDE", 1024)
# Alignment and test-time augmentation, chosen on LFW (README, "How the threshold was chosen"):
# the detector's box with a 5% margin; no flip for recognition and the gallery (it doubles the
# embedder's time on every request and camera frame).
FACE_ALIGN_METHOD = env_str("FACE_ALIGN_METHOD", "box")
FACE_ALIGN_MARGIN = env_float("FACE_ALIGN_MARGIN", 0.05)
FACE_FLIP_TTA = env_bool("FACE_FLIP_TTA", False)
# The verify endpoint's two fresh faces are embedded with flip TTA: +0.10 points on LFW (99.37% vs
# 99.27%, all 6,000 pairs) for twice the embedder time; recognition and the gallery stay without it.
FACE_VERIFY_FLIP_TTA = env_bool("FACE_VERIFY_FLIP_TTA", True)
# The embedder's runtime: "tflite" runs FaceNet in the TFLite interpreter, 2.2x faster per face than
# "keras" (the TensorFlow graph) with the same embeddings (lowest cosine 0.99999+ on real faces, LFW
# accuracy unchanged: BENCHMARKS.md, "Kiosk capacity"). The converted model is made once per machine
# (45-100 s of CPU, by the first process that needs it) and kept in TRAINING_CACHE_DIR, keyed by the weights' sha256.
# The default since the whole test suite ran on it; "keras" remains for a machine where the
# interpreter misbehaves.
FACE_EMBED_RUNTIME = env_str("FACE_EMBED_RUNTIME", "tflite")
if FACE_EMBED_RUNTIME not in ("tflite", "keras"):
    raise RuntimeError(f"FACE_EMBED_RUNTIME must be 'tflite' or 'keras', not {FACE_EMBED_RUNTIME!r}")
# Where the fused embedder (FACE_EMBEDDER=facenet+dlib) runs dlib's network: "tflite" (default) or "tf",
# the same network rebuilt from dlib's own weights file (recognition/engine/dlib_tf.py), or "dlib"
# (dlib-bin: no BLAS, one thread, 12-16x slower per chip). The descriptors are the same (1 - cosine to
# dlib-bin's < 1e-12 on LFW; no LFW pair decided differently), so templates stay comparable and the
# embedder's name does not change. "tflite" is converted once per machine into TRAINING_CACHE_DIR.
# BENCHMARKS.md, "dlib's descriptor on TensorFlow/TFLite".
FACE_DLIB_RUNTIME = env_str("FACE_DLIB_RUNTIME", "tflite")
if FACE_DLIB_RUNTIME not in ("dlib", "tf", "tflite"):
    raise RuntimeError(f"FACE_DLIB_RUNTIME must be 'dlib', 'tf' or 'tflite', not {FACE_DLIB_RUNTIME!r}")
# "mtcnn-graph": MTCNN compiled into one TensorFlow graph (default); "mtcnn": the stock package.
FACE_DETECTOR = env_str("FACE_DETECTOR", "mtcnn-graph")
# Load and trace the models when the ASGI app starts, not on the first request.
FACE_WARMUP = env_bool("FACE_WARMUP", True)
FACE_MIN_DETECTION_SCORE = env_float("FACE_MIN_DETECTION_SCORE", 0.9)
FACE_ENROLL_MIN_FACE_PX = env_int("FACE_ENROLL_MIN_FACE_PX", 60)
FACE_ENROLL_MIN_SHARPNESS = env_float("FACE_ENROLL_MIN_SHARPNESS", 60.0)
# A photo of several faces of similar size is enrolled on its portrait's central subject when one
# clearly is (recognition/engine/selection.py CentralRule: the largest face, 1.2x the next one's
# area, alone within 0.2 of the image centre); off: such photos are rejected as several_faces for
# staff to pick the face. Every enrollment path (API, admin, import_faces) follows it.
FACE_ENROLL_CENTRAL_SUBJECT = env_bool("FACE_ENROLL_CENTRAL_SUBJECT", True)
# An enrollment photo whose face is closer to another person than to its own by this much is
# held for review rather than accepted (a likely mislabel).
FACE_MISLABEL_MARGIN = env_float("FACE_MISLABEL_MARGIN", 0.05)
FACE_MAX_FACES_PER_IMAGE = env_int("FACE_MAX_FACES_PER_IMAGE", 50)

# Training runs (training/): evaluated, versioned recognizers built by the django-q worker.
# The open-set threshold is calibrated on held-out data for this false accept rate.
TRAINING_TARGET_FAR = env_float("TRAINING_TARGET_FAR", 0.01)
TRAINING_HELD_OUT_FRACTION = env_float("TRAINING_HELD_OUT_FRACTION", 0.3)
# An enrollment change queues a retrain this many seconds later; more changes meanwhile join it.
TRAINING_DEBOUNCE_SECONDS = env_int("TRAINING_DEBOUNCE_SECONDS", 60)
TRAINING_RETRAIN_ON_ENROLLMENT = env_bool("TRAINING_RETRAIN_ON_ENROLLMENT", True)
# A run that reported no progress for this long is taken for dead (worker killed) and marked failed.
TRAINING_STALE_SECONDS = env_int("TRAINING_STALE_SECONDS", 900)
# The training worker's CPU priority (nice, 0-19): on a small machine a run must not slow photo
# processing and the web workers (training.services.yield_cpu_to_enrollment).
TRAINING_NICE = env_int("TRAINING_NICE", 10)
# Faces of people who are NOT enrolled, for the unknown-rejection rate (e.g. LFW's images folder).
TRAINING_UNKNOWN_FACES_DIR = env_str("TRAINING_UNKNOWN_FACES_DIR") or None
TRAINING_UNKNOWN_MAX_IMAGES = env_int("TRAINING_UNKNOWN_MAX_IMAGES", 300)
# The approaches each run compares on the same split (nearest_neighbour is always included).
TRAINING_APPROACHES = env_list(
    "TRAINING_APPROACHES", ["nearest_neighbour", "softmax_head", "triplet_adapter", "siamese_head", "lbph", "eigenfaces"]
)
# Which recognizer a run puts in production: "auto" (the better of nearest neighbour and the softmax
# head on held-out data), or pinned to "nearest_neighbour" or "softmax_head".
# (TRAINING_RECOGNISER, the earlier spelling, is still read.)
TRAINING_RECOGNIZER = env_str("TRAINING_RECOGNIZER", env_str("TRAINING_RECOGNISER", "auto"))
# The softmax head's open-set threshold (a probability) when too few impostors were seen to calibrate it.
TRAINING_HEAD_MIN_PROBABILITY = env_float("TRAINING_HEAD_MIN_PROBABILITY", 0.9)
TRAINING_EXPORT_TFLITE = env_bool("TRAINING_EXPORT_TFLITE", True)
# Training at scale (training/runs.py): past this many people the comparison is fitted and evaluated
# on a fixed-seed sample of them, nearest neighbour only; past TRAINING_PIXEL_MAX_FACES faces the
# pixel baselines (every crop in memory) are skipped; past TRAINING_EDGE_MAX_FACES the edge label
# map carries no gallery.
TRAINING_EVAL_MAX_PEOPLE = env_int("TRAINING_EVAL_MAX_PEOPLE", 1000)
TRAINING_PIXEL_MAX_FACES = env_int("TRAINING_PIXEL_MAX_FACES", 5000)
TRAINING_EDGE_MAX_FACES = env_int("TRAINING_EDGE_MAX_FACES", 100_000)
# Model versions kept besides the active one (the newest N staff could roll back to, and the newest N
# failed ones); older ones and their files (label maps hold every photo's embedding, metrics name
# people) are deleted after each run and by the daily retention. 0 keeps them all.
TRAINING_KEEP_VERSIONS = env_int("TRAINING_KEEP_VERSIONS", 10)
# Converting FaceNet to TFLite takes a minute or more; the result is reused while weights and TF match.
TRAINING_CACHE_DIR = Path(env_str("TRAINING_CACHE_DIR", str(BASE_DIR / "var" / "cache")))

# The gallery's snapshot (recognition/gallery.py): the trained index and its ids, mapped by every
# process at start. It holds raw embeddings (biometric templates), so it lives in a private
# directory, never under MEDIA_ROOT; an erasure rewrites it at once.
GALLERY_SNAPSHOT_DIR = Path(env_str("GALLERY_SNAPSHOT_DIR", str(BASE_DIR / "var" / "gallery")))
# The scheduled snapshot task writes a new one once this many changes were logged since the last.
GALLERY_SNAPSHOT_MIN_CHANGES = env_int("GALLERY_SNAPSHOT_MIN_CHANGES", 1000)
# Change-log rows are kept this long (a process idle for half of it reloads instead of catching up).
GALLERY_CHANGE_KEEP_HOURS = env_int("GALLERY_CHANGE_KEEP_HOURS", 24)

# Users' own tokens (/api/v1/auth/token/) expire after this many hours (0: never); they are also
# deleted when the user's password changes or the account is deactivated. API keys do not expire.
API_TOKEN_TTL_HOURS = env_int("API_TOKEN_TTL_HOURS", 24 * 30)
# ---- client address, login lockout ------------------------------------------------------------------
# How many reverse proxies in front of the site append to X-Forwarded-For. 0: the client is
# REMOTE_ADDR and X-Forwarded-For is ignored (any client can write it); N: the N-th address from the
# right. Used by the login lockout, the API throttle and the audit log (facesite/client_ip.py).
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0)
# Failed sign-ins (the login page, the admin's, the API token endpoint) are counted per username and,
# separately, per client address; at the limit, both are locked for the cool-off (django-axes).
LOGIN_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5)
LOGIN_LOCKOUT_MINUTES = env_float("LOGIN_LOCKOUT_MINUTES", 15)
# Either one locks: a per-address limit alone lets a botnet guess one account's password from many
# addresses; a per-username limit alone lets one address try a few passwords on every account.
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_FAILURE_LIMIT = "facesite.lockout.failure_limit"
AXES_COOLOFF_TIME = "facesite.lockout.cool_off"
AXES_CLIENT_IP_CALLABLE = "facesite.client_ip.client_ip"
AXES_LOCKOUT_CALLABLE = "facesite.lockout.lockout_response"
# A successful sign-in clears that username's and address's failures.
AXES_RESET_ON_SUCCESS = True
# Failures only; successful sign-ins are not logged (no second store of addresses and user agents).
AXES_DISABLE_ACCESS_LOG = True

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "security.authentication.ApiKeyAuthentication",
        "security.authentication.ExpiringTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # Per token (or per user, or per client address when anonymous); see security/throttling.py.
    "DEFAULT_THROTTLE_CLASSES": ["security.throttling.TokenRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "staff": env_str("THROTTLE_STAFF", "1200/min"),
        "client": env_str("THROTTLE_CLIENT", "600/min"),
        "kiosk": env_str("THROTTLE_KIOSK", "600/min"),
        "anon": env_str("THROTTLE_ANON", "30/min"),
        # POST /api/v1/checkins/ per key (else per user), on top of the role's rate (checkin/api.py)
        "edge_checkin": env_str("THROTTLE_EDGE_CHECKIN", "120/min"),
        # the costly requests' own rates (security.throttling.ScopedTokenThrottle), besides the role's
        "enroll": env_str("THROTTLE_ENROLL", "120/min"),
        "export": env_str("THROTTLE_EXPORT", "20/min"),
        "report": env_str("THROTTLE_REPORT", "30/min"),
        "outliers": env_str("THROTTLE_OUTLIERS", "6/min"),
    },
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "facesite.api.api_exception_handler",
    # Anonymous callers are counted by client address; security/throttling.py takes it from
    # facesite.client_ip, which follows the same rule as this.
    "NUM_PROXIES": TRUSTED_PROXY_COUNT,
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "facesite API",
    "DESCRIPTION": "Face enrollment, recognition and verification.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Not part of `check --deploy`: run-production.sh fails on any warning, and a view the schema
    # cannot describe (drf_spectacular.W002) is a documentation gap, not a reason to refuse to start.
    "ENABLE_DJANGO_DEPLOY_CHECK": False,
    # Served from drf-spectacular-sidecar's static files rather than a CDN: /api/v1/docs/ works offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

REDIS_URL = env_str("REDIS_URL")
# Two django-q clusters on one broker, each with its own queue: the default one ("facesite": photo
# processing, webhooks, schedules) and TRAINING_Q_CLUSTER for training runs, so a retrain of minutes
# never holds up enrollment. Start the second with `Q_CLUSTER_NAME=training manage.py qcluster`
# (scripts/run.sh and run-production.sh start both).
TRAINING_Q_CLUSTER = "training"
Q_CLUSTER = {
    "name": "facesite",
    "workers": env_int("Q_WORKERS", 1),
    "timeout": env_int("Q_TIMEOUT", 3600),
    "retry": env_int("Q_TIMEOUT", 3600) + 60,
    "max_attempts": 1,
    "catch_up": False,
    "sync": env_bool("Q_SYNC", False),
    "ALT_CLUSTERS": {
        TRAINING_Q_CLUSTER: {
            "workers": env_int("Q_TRAINING_WORKERS", 1),
            "timeout": env_int("Q_TRAINING_TIMEOUT", 4 * 3600),
            "retry": env_int("Q_TRAINING_TIMEOUT", 4 * 3600) + 60,
        }
    },
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
    # Each websocket consumer waits on the layer with a 5 s BZPOPMIN; redis-py 8's default 5 s socket
    # timeout would cut that wait and kill every connection idle for 5 s (close 1011), so it is longer.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": env_float("CHANNEL_LAYER_SOCKET_TIMEOUT", 30.0)}]},
        }
    }
    # Shared by every web worker, so throttling counts a token's requests across processes.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env_str("CACHE_KEY_PREFIX", "facesite"),
            "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
        }
    }
else:
    Q_CLUSTER["orm"] = "default"
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.request": {"level": "ERROR"},
        # faiss tries its AVX512 and AVX2 builds first and logs each miss with a traceback at INFO:
        # not actionable (the generic build loads), but it reads like a failure on every start.
        "faiss.loader": {"level": "WARNING"},
        "tensorflow": {"level": "ERROR"},
        "absl": {"level": "WARNING"},
    },
}

# ---- privacy ----------------------------------------------------------------------------------------
# Original enrollment photos older than this many days are deleted (embeddings are kept) by the
# daily `apply_retention` task; 0 keeps them for ever. The 160x160 aligned crops and the wider face
# regions go too unless FACE_RETENTION_KEEP_CROPS is on (a retrain re-embeds from crops, an embedder
# switch from regions, without the originals).
FACE_PHOTO_RETENTION_DAYS = env_int("FACE_PHOTO_RETENTION_DAYS", 0)
FACE_RETENTION_KEEP_CROPS = env_bool("FACE_RETENTION_KEEP_CROPS", True)
# Erasing a person also deletes their check-ins; off keeps them, anonymised (person set to null).
ERASE_CHECKINS_WITH_PERSON = env_bool("ERASE_CHECKINS_WITH_PERSON", True)
# Audit events (who called recognize/verify, when, with what result; never images) kept this long.
AUDIT_LOG_RETENTION_DAYS = env_int("AUDIT_LOG_RETENTION_DAYS", 365)
# Check-in records (name, time, similarity, device) kept this long; the check-in notice says so.
# 0 keeps them until staff delete them. Consent records expire after the same period once nothing
# (a check-in, a visitor sighting or enrollment) refers to them.
CHECKIN_RETENTION_DAYS = env_int("CHECKIN_RETENTION_DAYS", 365)
# The longest span (in days, both ends included) one attendance report may cover.
REPORT_MAX_DAYS = env_int("REPORT_MAX_DAYS", 366)
# ... and at most this many person-days (days x the active people it covers): each is a row of the
# answer, built in the web worker's memory (2,000 people x a year was 215 MB and 17 s).
REPORT_MAX_ROWS = env_int("REPORT_MAX_ROWS", 100_000)
# Exports (privacy/services.py) are written to a temporary file and streamed, not built in memory:
# up to this many bytes stay in memory, the rest goes to an anonymous file (no name on disk, so it
# cannot outlive the response or a crash) in EXPORT_TEMP_DIR (default: the system's temp folder).
EXPORT_SPOOL_MAX_BYTES = env_int("EXPORT_SPOOL_MAX_BYTES", 1024 * 1024)
EXPORT_TEMP_DIR = env_str("EXPORT_TEMP_DIR") or None
# Webhook deliveries (their payloads name people) kept this long in the delivery log.
WEBHOOK_LOG_RETENTION_DAYS = env_int("WEBHOOK_LOG_RETENTION_DAYS", 30)

# ---- production profile -------------------------------------------------------------------------------
# With DEBUG off: secure cookies, HSTS, no sniffing, no framing, and hashed static files served by
# WhiteNoise. SECURE_SSL_REDIRECT and SECURE_PROXY_SSL_HEADER are for a TLS-terminating proxy.
SECURE_COOKIES = env_bool("SECURE_COOKIES", not DEBUG)
SESSION_COOKIE_SECURE = SECURE_COOKIES
CSRF_COOKIE_SECURE = SECURE_COOKIES
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
if env_bool("BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# scripts/run-production.sh refuses to start on any deploy-check warning (a weak SECRET_KEY, cookies
# sent over plain http, no HSTS, ...). A check is silenced only where the configuration has answered it
# by an explicit choice, or where it is not this site's to answer; the SECRET_KEY check never is.
SILENCED_SYSTEM_CHECKS = [
    # W005 (HSTS for every subdomain) and W021 (the browsers' HSTS preload list): decisions for the
    # owner of the whole domain, taken at its apex, not by one site on one host name of it.
    "security.W005",
    "security.W021",
]
if env_bool("BEHIND_TLS_PROXY", False):
    # W008 (no SECURE_SSL_REDIRECT): the TLS-terminating proxy redirects http to https itself.
    SILENCED_SYSTEM_CHECKS.append("security.W008")
if os.environ.get("SECURE_COOKIES") is not None and not SECURE_COOKIES:
    # SECURE_COOKIES=0 declares a site served over plain http (a trial on loopback): secure-only
    # cookies (W012, W016) and a redirect to https (W008) cannot work there.
    SILENCED_SYSTEM_CHECKS += ["security.W008", "security.W012", "security.W016"]
if os.environ.get("SECURE_HSTS_SECONDS", "").strip() == "0":
    # W004: HSTS switched off on purpose (plain http, or HSTS set by the proxy).
    SILENCED_SYSTEM_CHECKS.append("security.W004")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# ---- live check-in (checkin.consumers) --------------------------------------------------------
# The consent notice's version: a change to the notice's wording gets a new version, and each
# Consent row records which one the person agreed to.
CONSENT_NOTICE_VERSION = env_str("CONSENT_NOTICE_VERSION", "2026-12-2")
CONSENT_MIN_AGE = env_int("CONSENT_MIN_AGE", 16)
# A frame over either limit is refused with an error on the socket (the connection stays open).
CHECKIN_MAX_FRAME_BYTES = env_int("CHECKIN_MAX_FRAME_BYTES", 512 * 1024)
CHECKIN_MAX_FRAME_PIXELS = env_int("CHECKIN_MAX_FRAME_PIXELS", 1280 * 960)
CHECKIN_MAX_FPS = env_float("CHECKIN_MAX_FPS", 20.0)
# Text messages (consent, withdraw) per second per socket (a page sends two per connection); more
# are dropped, and a flood of them closes the socket like a flood of frames.
CHECKIN_MAX_TEXT_PER_SECOND = env_float("CHECKIN_MAX_TEXT_PER_SECOND", 5.0)
# Consent records one /ws/identify/ connection may make (each given, then withdrawn): a page makes one
# per Start; past it the socket is closed (too_many_consents), so a script cannot pile up rows.
CHECKIN_MAX_CONSENTS_PER_SOCKET = env_int("CHECKIN_MAX_CONSENTS_PER_SOCKET", 20)
# The verify page's consent POST reuses the account's consent to the same notice given within this
# many hours instead of recording another (0: a new record on every POST).
VERIFY_CONSENT_REUSE_HOURS = env_int("VERIFY_CONSENT_REUSE_HOURS", 24)
# A person is checked in after this many consecutive frames agree on them above the threshold,
# and not again within the window. A tracked face is re-embedded every N frames in between.
CHECKIN_STABLE_FRAMES = env_int("CHECKIN_STABLE_FRAMES", 4)
CHECKIN_REEMBED_EVERY = env_int("CHECKIN_REEMBED_EVERY", 3)
# The live detector: faces from this size (px in the frame; enrollment needs 60), the whole frame
# searched every N frames and only around the followed faces in between (BENCHMARKS.md, "stream").
CHECKIN_MIN_FACE_PX = env_int("CHECKIN_MIN_FACE_PX", 40)
CHECKIN_FULL_FRAME_EVERY = env_int("CHECKIN_FULL_FRAME_EVERY", 5)
CHECKIN_REPEAT_WINDOW_MINUTES = env_int("CHECKIN_REPEAT_WINDOW_MINUTES", 30)
# An edge kiosk's check-in dated more than this ahead of the server's clock is refused (retention
# would never delete it); one older than CHECKIN_RETENTION_DAYS is too.
EDGE_CLOCK_SKEW_SECONDS = env_int("EDGE_CLOCK_SKEW_SECONDS", 300)
# Faces per answer of GET /api/v1/edge/gallery/ (its default and the cap of ?limit=): ~2 MB of JSON
# with FaceNet's 128-d templates, however large the gallery.
EDGE_GALLERY_PAGE_FACES = env_int("EDGE_GALLERY_PAGE_FACES", 2000)
# Ask logged-in users (not kiosks: that is a per-kiosk switch) for a head turn before check-in.
CHECKIN_LIVENESS_FOR_USERS = env_bool("CHECKIN_LIVENESS_FOR_USERS", False)
# Open /ws/identify/ sockets at once: per kiosk (session or bound API key), per API key or user, and
# per web process (0 = no cap). Beyond a cap the new socket is told too_many_connections (close 4429).
# With REDIS_URL the per-kiosk/per-key counts hold across workers (checkin.socket_limits).
CHECKIN_MAX_SOCKETS_PER_KIOSK = env_int("CHECKIN_MAX_SOCKETS_PER_KIOSK", 2)
CHECKIN_MAX_SOCKETS_PER_KEY = env_int("CHECKIN_MAX_SOCKETS_PER_KEY", 4)
CHECKIN_MAX_SOCKETS = env_int("CHECKIN_MAX_SOCKETS", 32)
# Frames analysed at once per web process, shared by all its /ws/identify/ sockets and served
# round-robin (checkin.scheduling): a busy stream cannot starve the others or the HTTP API.
# 0 = no shared pool (each socket's frame in the event loop's default executor, the old behaviour).
CHECKIN_INFERENCE_WORKERS = env_int("CHECKIN_INFERENCE_WORKERS", 2)
# A socket that sends nothing (no frame, no message) for this long is closed (idle_timeout, 4408).
CHECKIN_IDLE_SECONDS = env_float("CHECKIN_IDLE_SECONDS", 120.0)
# An open socket's access is checked again this often (0 = never), and the socket closed when it is
# gone: on /ws/identify/ an API key or token revoked or expired, a kiosk deactivated or signed out, a
# user logged out, deactivated or with a changed password; on the staff feed (/ws/checkins/, people's
# names) the same for the session, or the staff flag withdrawn.
CHECKIN_ACCESS_RECHECK_SECONDS = env_float("CHECKIN_ACCESS_RECHECK_SECONDS", 30.0)
# Feed sockets open at once per account (too_many_connections, 4429 beyond it; 0 = no cap).
CHECKIN_MAX_FEED_SOCKETS_PER_USER = env_int("CHECKIN_MAX_FEED_SOCKETS_PER_USER", 4)

# ---- unknown visitors (visitors/, README "Unknown visitors") ----------------------------------------
# After consent on /ws/identify/, a face that stays unknown for CHECKIN_STABLE_FRAMES frames becomes a
# sighting of an anonymous visitor (its embedding; a later sighting of the same face joins it). Off:
# nothing is kept about unknown faces, and the notice does not mention it.
VISITORS_ENABLED = env_bool("VISITORS_ENABLED", True)
# A sighting (its embedding and crop) is deleted this many days after it was taken by the daily
# "visitors: purge expired" task; a visitor with no sighting left goes with it. The notice says so.
VISITOR_RETENTION_DAYS = max(1, env_int("VISITOR_RETENTION_DAYS", 7))
# Keep one small face crop per visitor (VISITOR_CROP_PX square JPEG) for staff to recognise them. Off:
# no image of an unknown face is ever written.
VISITOR_KEEP_CROP = env_bool("VISITOR_KEEP_CROP", False)
VISITOR_CROP_PX = env_int("VISITOR_CROP_PX", 112)
# Two sightings are the same visitor at or above this cosine similarity; empty: the recognition match
# threshold in force (the active model version's calibrated one, else FACE_MATCH_THRESHOLD).
VISITOR_MATCH_THRESHOLD = env_float("VISITOR_MATCH_THRESHOLD", 0.0) or None
# At most this many embeddings (the latest sightings') are kept per visitor.
VISITOR_MAX_EMBEDDINGS = env_int("VISITOR_MAX_EMBEDDINGS", 10)

# ---- integrations: webhooks and MQTT (integrations/, README "Integrations") -----------------------
# Webhook URLs on private, loopback or reserved addresses are refused (at registration and at every
# send) unless this is on (tests; a trusted LAN).
WEBHOOK_ALLOW_PRIVATE = env_bool("WEBHOOK_ALLOW_PRIVATE", False)
WEBHOOK_TIMEOUT_SECONDS = env_float("WEBHOOK_TIMEOUT_SECONDS", 5.0)  # each connect, send or read
# One delivery attempt in all (every address tried): a receiver answering a byte at a time is cut off.
WEBHOOK_DEADLINE_SECONDS = env_float("WEBHOOK_DEADLINE_SECONDS", 15.0)
# A failed delivery is retried after base, 6x base, 36x base ... seconds (10 s, 60 s, 6 min, ...).
WEBHOOK_MAX_ATTEMPTS = env_int("WEBHOOK_MAX_ATTEMPTS", 6)
WEBHOOK_RETRY_BASE_SECONDS = env_float("WEBHOOK_RETRY_BASE_SECONDS", 10.0)
# mqtt://user:pass@host:1883 (mqtts:// for TLS); empty: no MQTT.
MQTT_URL = env_str("MQTT_URL", "")
MQTT_TOPIC_PREFIX = env_str("MQTT_TOPIC_PREFIX", "facesite")
MQTT_TIMEOUT_SECONDS = env_float("MQTT_TIMEOUT_SECONDS", 5.0)
