"""The served application: app builder, FastAPI/WebRTC ingress, sessions, per-frame orchestration."""
