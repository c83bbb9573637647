"""An offline edge kiosk: recognizes faces with the server's exported TFLite model and label map,
applies the server's multi-frame check-in rule, queues check-ins on disk while the server is away
and uploads them once it answers. See edge/README.md."""
