"""Refresh docs/dashboard-*.png from a real run: the bundled SmolLM2-135M-Instruct fine-tuned on the
quickstart's Chiang Mai demo (2 epochs), then the job page and the playground (base model beside the
fine-tune) in headless Chromium.

    PYTHONPATH=src nice -n 10 .venv/bin/python docs/screenshots.py    # a few minutes on 2 CPU cores
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> None:
    import openai
    from playwright.sync_api import expect, sync_playwright

    from tunery import demo
    from tunery.models import DEFAULT_MODEL, materialize
    from tunery.quickstart import EmbeddedServer, _free_port
    from tunery.settings import Settings

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cache = Settings.from_env().model_cache
    home = Path(tempfile.mkdtemp(prefix="tunery-shots-"))
    os.environ["TUNERY_HOME"], os.environ["TUNERY_MODEL_CACHE"] = str(home), str(cache)
    settings = Settings.from_env().ensure_dirs()
    materialize(DEFAULT_MODEL, settings)
    server = EmbeddedServer(settings, _free_port()).start()
    url = server.base_url[: -len("/v1")]
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused")
        train_path, valid_path = demo.write_dataset(home / "demo")
        train = client.files.create(file=open(train_path, "rb"), purpose="fine-tune")
        valid = client.files.create(file=open(valid_path, "rb"), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model=DEFAULT_MODEL, training_file=train.id, validation_file=valid.id,
                                             suffix="chiang-mai", hyperparameters={"n_epochs": 2})
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{url}/#/jobs/{job.id}")
            t0 = time.monotonic()
            while page.locator(".title-row .badge").text_content() not in ("succeeded", "failed", "cancelled"):
                if time.monotonic() - t0 > 1800:
                    sys.exit("the job did not finish in 30 minutes")
                time.sleep(2)
            page.wait_for_timeout(2500)
            page.screenshot(path=str(DOCS / "dashboard-job.png"), full_page=True)
            job = client.fine_tuning.jobs.retrieve(job.id)
            page.goto(f"{url}/#/playground?models={DEFAULT_MODEL},{job.fine_tuned_model}")
            page.get_by_label("System message").fill(demo.SYSTEM_PROMPT)
            page.get_by_label("User message").fill("How do I get to Wat Phra That Doi Suthep?")
            page.get_by_label("Temperature").fill("0")
            page.get_by_label("Max tokens").fill("80")
            page.get_by_role("button", name="Send").click()
            for i in range(2):
                expect(page.locator(".pg-answer").nth(i)).to_have_attribute("data-state", "done", timeout=300_000)
            page.screenshot(path=str(DOCS / "dashboard-playground.png"), full_page=True)
            browser.close()
        print(f"wrote {DOCS}/dashboard-job.png and dashboard-playground.png ({job.id}, "
              f"{time.monotonic() - t0:.0f} s)")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
