import time

from backend.app.services.jobs import WORKER_STOPPED, JobStore


def test_transitions_are_guarded(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    job = store.create("analysis", {"model": "tiny-llama"})
    assert job["status"] == "queued" and job["params"] == {"model": "tiny-llama"}
    assert store.start(job["id"])
    assert not store.start(job["id"])  # only once
    assert store.update_progress(job["id"], "capture", 0.5, "half") == "running"
    got = store.get(job["id"])
    assert (got["stage"], got["progress"], got["message"]) == ("capture", 0.5, "half")
    assert store.cancel(job["id"])
    assert store.update_progress(job["id"], "capture", 0.6, "") == "cancelled"
    store.succeed(job["id"], {"x": 1})  # a cancelled job stays cancelled
    assert store.get(job["id"])["status"] == "cancelled"
    assert not store.cancel(job["id"])


def test_history_survives_a_new_store(tmp_path):
    a = JobStore(tmp_path / "jobs.db").create("pruning", {"analysis_id": "x"})
    store = JobStore(tmp_path / "jobs.db")
    assert [j["id"] for j in store.list_jobs("pruning")] == [a["id"]]
    assert store.list_jobs("analysis") == []
    assert store.get(a["id"], "analysis") is None


def test_running_job_of_a_dead_worker_fails(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    job = store.create("analysis", {})
    store.start(job["id"])
    dead_pid = int(open("/proc/sys/kernel/pid_max").read()) + 1  # no process can have it (none is started)
    with store._connect() as db:
        db.execute("UPDATE jobs SET worker_pid=? WHERE id=?", (dead_pid, job["id"]))
    got = store.get(job["id"])
    assert got["status"] == "failed" and got["error"] == WORKER_STOPPED


def test_stale_heartbeat_fails(tmp_path):
    store = JobStore(tmp_path / "jobs.db", heartbeat_timeout_s=5)
    job = store.create("analysis", {})
    store.start(job["id"])
    with store._connect() as db:
        db.execute("UPDATE jobs SET worker_host='elsewhere', heartbeat=? WHERE id=?", (time.time() - 60, job["id"]))
    assert store.reap_dead() == [job["id"]]
    assert store.get(job["id"])["status"] == "failed"


def test_eta_from_stage_rate(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    job = store.create("analysis", {})
    store.start(job["id"])
    store.update_progress(job["id"], "ica", 0.0, "")
    with store._connect() as db:
        db.execute("UPDATE jobs SET stage_started_at=? WHERE id=?", (time.time() - 10, job["id"]))
    store.update_progress(job["id"], "ica", 0.5, "")
    assert 8 < store.get(job["id"])["eta_s"] < 12


def test_worker_start_reaps_jobs_under_its_own_pid(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    job = store.create("analysis", {})
    store.start(job["id"])  # recorded under this pid, as a previous process with the same pid would
    assert store.get(job["id"])["status"] == "running"  # looks alive from outside
    assert store.reap_own_pid() == [job["id"]]
    assert store.get(job["id"])["error"] == WORKER_STOPPED



def test_pruned_evaluation_streams_its_running_perplexity_next_to_the_dense_one():
    """The worker's progress for "evaluate pruned" passes the library's running PPL on (stage
    ``ppl@<window>``, tests/fnprune/test_evaluate.py) and names the dense model's PPL at that window."""
    from fnprune.pruning.job import stage_progress

    seen = []
    progress = stage_progress(lambda stage, fraction, message="": seen.append((stage, fraction, message)),
                               "evaluate pruned", {"128": 41.5, "512": 39.25})
    progress("ppl@512", 0.5, "PPL@512 so far 72.10 (3 of 6 windows, 1,533 tokens)")
    progress("ppl@128", 1.0, "PPL@128 so far 80.00 (24 of 24 windows, 3,048 tokens)")
    progress("speed", 0.0, "")
    assert seen == [("evaluate pruned", 0.5, "PPL@512 so far 72.10 (3 of 6 windows, 1,533 tokens); dense model 39.25"),
                    ("evaluate pruned", 1.0, "PPL@128 so far 80.00 (24 of 24 windows, 3,048 tokens); dense model 41.50"),
                    ("evaluate pruned", 0.0, "")]


def test_leftovers_of_every_kind_are_swept_but_a_running_jobs_stay(tmp_path):
    """The worker's start-up sweep removes temporary files of finished jobs of every kind, and leaves a
    running job's alone."""
    from backend.app.core.config import JOB_FOLDERS, Settings
    from backend.app.worker import remove_leftovers

    settings = Settings(HOME=tmp_path / "home", DATA_DIR=tmp_path / "data", DEVICE="cpu")
    store = JobStore(settings.jobs_path)
    kept, swept = [], []
    for kind in JOB_FOLDERS:
        done, running = store.create(kind, {"k": kind}), store.create(kind, {"k": kind, "n": 2})
        store.start(done["id"])
        store.fail(done["id"], "boom")
        store.start(running["id"])
        for job, into in ((done, swept), (running, kept)):
            job_dir = settings.job_dir(kind, job["id"])
            (job_dir / "work").mkdir(parents=True)
            (job_dir / ".tmp-abc-model.gguf").write_text("partial")
            (job_dir / "result.json").write_text("{}")
            into += [job_dir / "work", job_dir / ".tmp-abc-model.gguf"]
    remove_leftovers(settings, store)
    assert [p for p in swept if p.exists()] == []
    assert all(p.exists() for p in kept)
    assert len(list(settings.data_dir.glob("*/*/result.json"))) == 2 * len(JOB_FOLDERS)  # finished files stay
