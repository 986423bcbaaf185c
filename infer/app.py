"""The web application: upload a chest radiograph, see the predicted opacities and study probabilities.

    python infer/app.py --weights-dir W [--host 127.0.0.1] [--port 8000] [--device cpu] [--max-upload-mb 64]
        [--max-pending 4]

One page (``/``) where a DICOM, PNG or JPEG is dropped or picked and shown with its predicted boxes
(a slider hides boxes under a score; it starts at the manifest's ``display_threshold``, the box score
of best F1 out of fold, chosen by infer/calibrate.py), the four study probabilities and the image's "none", and, when
the study model has the auxiliary segmentation head, a toggle that overlays its opacity map (where
the model looks); a JSON API (``POST /api/predict``, the file in the multipart field ``file``;
documented at ``/docs``) and ``GET /healthz``. The same predictor as make_submission.py
(``utils.prediction.predictor.Ensemble``), loaded once at start.

Prediction runs in a worker thread, one at a time behind a lock (the models, pydicom's settings and
torch's thread count are shared by the process), so the event loop keeps answering (``/healthz``
within milliseconds while radiographs are predicted). At most ``--max-pending`` uploads that have fully
arrived wait or are predicted at once, and four times as many are received at once (each held in
memory); one more gets 503 with ``Retry-After`` at once, before its body is read, so memory stays
bounded however many clients send. A body must keep arriving (after 10 s, 16 KiB/s on average: a slow
or stalled sender gets 408 and never holds a prediction slot); a client that goes away mid-upload is one
log line; multipart bodies are parsed off the event loop, at most 16 fields. Uploads are read
into memory (never written to disk: the body is streamed into memory with a running count and parsed
there) up to the size limit (413 beyond it, from ``Content-Length`` before reading when it is
declared); images with absurd dimensions, and deflated DICOMs that would expand past the pixel bound,
are refused before decoding (:class:`utils.data.dicom.ImageSizeError`: 413); an unreadable file gets a 422
saying why. It listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from utils.core.config import MAX_PENDING, MAX_UPLOAD_MB, device_argument, int_in
from utils.core.log import configure_logging
from utils.serving.app import create_app


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", type=Path, default=None, help="weights folder with manifest.json")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int_in(1, 65535), default=8000)
    parser.add_argument("--device", type=device_argument, default="cpu", help="cpu (default) | cuda | auto")
    parser.add_argument("--max-upload-mb", type=int_in(1, MAX_UPLOAD_MB), default=64,
                        help=f"larger uploads get 413 (1 to {MAX_UPLOAD_MB})")
    parser.add_argument("--max-pending", type=int_in(1, MAX_PENDING), default=4,
                        help=f"requests read, waiting or predicted at once; one more gets 503 (1 to {MAX_PENDING})")
    return parser


def check_can_listen(host: str, port: int) -> None:
    """Bind ``host:port`` once and let it go: a port in use, a privileged port or an unknown host is a
    one-line SystemExit before any model is loaded (uvicorn would say it with a traceback, after)."""
    import socket

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as err:
        raise SystemExit(f"error: cannot listen on {host}:{port}: {err.strerror or err}") from None


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    args = get_args_parser().parse_args(argv)
    configure_logging()
    check_can_listen(args.host, args.port)
    app = create_app(args.weights_dir, device=args.device, max_upload_bytes=args.max_upload_mb << 20,
                     max_pending=args.max_pending)
    uvicorn.run(app, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
