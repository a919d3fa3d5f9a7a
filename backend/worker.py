"""``python -m backend.worker``: consume the job queue (settings from the FNPRUNE_* environment)."""

from backend.app.worker import main

if __name__ == "__main__":
    main()
