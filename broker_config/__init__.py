"""Mosquitto configuration shipped with fedmq (a package only so that wheels carry these files)."""
