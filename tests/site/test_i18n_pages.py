"""Every page a signed-in user can reach reads as Chinese in zh-hans: the visible text (and the
placeholders, titles and labels a reader meets) has no English words left, outside user data, model
output and code (marked translate="no" in the templates, the HTML standard's "do not translate")
and an allowlist of names that Chinese users keep in English (Puyu, LoRA, JSON, …).

The objects behind the pages are made the way the studio stores them (a dataset, a model version, a
training run, a deployment, an evaluation run, a conversation, …); what a user typed is Chinese or
short, as a Chinese user's would be, so that only the interface is judged. English not translated yet
is listed page by page in KNOWN_LEFT, a ratchet: a new English word fails, and so does a listed one
that is gone (take it off the list)."""
from __future__ import annotations

import hashlib
import json
import re
from html.parser import HTMLParser

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from tests.conftest import login_client, own_data_dir

pytestmark = pytest.mark.django_db

# Names and terms Chinese users keep in English (the brief's list, the chain's tools, formats).
ALLOWED = {
    "Puyu", "Studio", "LoRA", "QLoRA", "SFT", "DPO", "KTO", "JSON", "JSONL", "API", "APIs", "GPU", "GPUs", "CPU",
    "token", "tokens", "KV", "cache", "WanJuan", "InternLM", "Train", "InternEvo", "XTuner", "LMDeploy",
    "OpenCompass", "CompassRank", "Lagent", "AgentLego", "OpenAI", "HTTP", "HTTPS", "URL", "CSV", "Parquet",
    "YAML", "Markdown", "PDF", "UTF", "Bearer", "Authorization", "sha", "safetensors", "GGUF", "Hugging", "Face",
    "Llama", "SmolLM", "Elo", "Wilson", "Celery", "Redis", "PostgreSQL", "SQLite", "Swagger", "OpenAPI", "AdamW",
    "cosine", "linear", "bf", "fp", "int", "MMLU", "GSM", "HumanEval", "WikiText", "BPB", "NLL", "EOS", "BOS",
    "top", "max", "min", "ETA", "MFU", "RoPE", "vLLM", "Prometheus", "zip", "tar", "jsonl", "csv", "json", "yaml",
    "txt", "parquet", "html", "pdf", "md", "http", "https", "www", "localhost", "Chromium", "Django", "htmx",
    "UTC", "Bradley", "Terry", "MinHash", "Jaccard", "Unicode", "NFKC", "ShareGPT", "Alpaca", "ChatML", "Hermes",
    "GET", "POST", "Web", "Qwen", "ReAct", "CUDA", "torchao", "bitsandbytes", "LLM", "ARC", "HellaSwag",
    "CircularEval", "MiB", "GiB",
}
WORD = re.compile(r"[A-Za-z]{3,}")
HEX = re.compile(r"\b[0-9a-f]{8,}\b")
SKIPPED_ELEMENTS = {"script", "style", "code", "pre", "kbd", "samp", "textarea", "svg", "math"}
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
READ_ATTRIBUTES = ("placeholder", "title", "aria-label", "alt")


class VisibleText(HTMLParser):
    """The text a reader sees, less what is marked translate="no" and code."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.skipping: list[str] = []
        self.parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        skip = tag in SKIPPED_ELEMENTS or attrs.get("translate") == "no" or "hidden" in attrs
        if not self.skipping and not skip:
            self.parts += [attrs[a] for a in READ_ATTRIBUTES if attrs.get(a)]
            if tag == "input" and attrs.get("type") in ("submit", "button") and attrs.get("value"):
                self.parts.append(attrs["value"])
        if tag not in VOID and (self.skipping or skip):
            self.skipping.append(tag)

    def handle_endtag(self, tag):
        if self.skipping and self.skipping[-1] == tag:
            self.skipping.pop()

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


def english_words(html: str, user_data=frozenset()) -> list[str]:
    """The English words a reader sees; `user_data` is what the test's users typed (their names)."""
    parser = VisibleText()
    parser.feed(html)
    text = HEX.sub(" ", " ".join(parser.parts))  # content hashes are data, not words
    return sorted({w for w in WORD.findall(text) if w not in ALLOWED | user_data and w.lower() not in ALLOWED})


@pytest.fixture
def studio(users, tmp_path, settings, monkeypatch):
    """One of each object a page shows, owned by users["owner"]; returns the URL kwargs by name."""
    from apps.datasets.models import Dataset, DatasetUpload, DatasetVersion
    from apps.jobs.models import Job, JobStatus
    from apps.leaderboards import services as boards
    from apps.leaderboards.models import BenchmarkScore, ImportedSummary, SampleResult
    from apps.playground import services as playground
    from apps.playground.models import Battle, Comparison, HttpTool, Message
    from apps.registry.models import ModelVersion, RegisteredModel
    from apps.serving import services as serving
    from apps.serving.models import ApiKey, DeploymentState
    from apps.accounts.models import APIToken
    from apps.training.models import TrainingPreset, TrainingRun

    own_data_dir(tmp_path, settings, monkeypatch)
    owner = users["owner"]
    rows = [{"question": "二加二等于几？", "choices": ["三", "四", "五", "六"], "answer": "B"}] * 4
    dataset = Dataset.objects.create(owner=owner, name="算术题", description="四则运算")
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    data = DatasetVersion.objects.create(
        dataset=dataset, number=1, source="upload", source_format="multiple_choice", canonical="multiple_choice",
        sha256=hashlib.sha256(body).hexdigest(), rows=len(rows), size_bytes=len(body), created_by=owner)
    data.path.write_bytes(body)
    upload = DatasetUpload.objects.create(dataset=dataset, filename="题.jsonl", stored_name="u1", size_bytes=len(body),
                                          created_by=owner, report={"total": 4, "valid": 4, "errors": []})
    model = RegisteredModel.objects.create(owner=owner, name="小模型")
    version = ModelVersion.objects.create(model=model, number=1, kind="base", source="import:folder",
                                          architecture="LlamaForCausalLM", parameter_count=100_000,
                                          has_chat_template=True, created_by=owner)
    version.path.mkdir(parents=True)
    (version.path / "config.json").write_text("{}")
    job = Job.objects.create(kind="training", owner=owner, title="微调", status=JobStatus.SUCCEEDED, queue="gpu",
                             params={"method": "sft", "finetune": "lora", "max_steps": 4},
                             started_at=timezone.now(), finished_at=timezone.now())
    TrainingRun.objects.create(job=job, method="sft", finetune="lora", base_version=version, target_model=model,
                               checkpoint_dir=str(tmp_path / "ck"))
    preset = TrainingPreset.objects.create(owner=owner, name="快速", fields={"max_steps": 4})
    deployment = serving.create_deployment(owner, name="ft-1", model=model, version=version)
    deployment.state = DeploymentState.READY
    deployment.save(update_fields=["state"])
    key, _ = ApiKey.issue(owner, "脚本")
    token, _ = APIToken.issue(owner, "笔记本")
    benchmark = boards.create_benchmark(owner, name="qa", dataset_version=data, shape="multiple_choice",
                                        scorer={"paradigm": "likelihood"}, dimension="knowledge")
    suite = boards.create_suite(owner, name="c1", items=[(benchmark, 1.0)])
    run = boards.submit_evaluation(owner, suite_version=suite, model_version=version)
    Job.objects.filter(pk=run.job_id).update(status=JobStatus.SUCCEEDED, finished_at=timezone.now())
    score = BenchmarkScore.objects.create(run=run, benchmark_version=benchmark, metric="accuracy", score=0.5,
                                          ci_low=0.1, ci_high=0.9, n=2, correct=1)
    SampleResult.objects.bulk_create([SampleResult(score=score, index=i, prompt="问题", output="回答",
                                                   reference="B", correct=bool(i)) for i in range(2)])
    summary = ImportedSummary.objects.create(owner=owner, filename="汇总.csv")
    conversation = playground.create_conversation(owner, deployment=deployment, title="你好", system_prompt="简短")
    asked = Message.objects.create(conversation=conversation, role="user", content="你好")
    Message.objects.create(conversation=conversation, role="assistant", parent=asked, content="你好！",
                           deployment=deployment, model_version=version)
    two = playground.create_conversation(owner, deployment=deployment, title="对比")
    comparison = Comparison.objects.create(owner=owner, conversation=two, deployments=[deployment.pk, deployment.pk])
    three = playground.create_conversation(owner, deployment=deployment, title="竞技")
    battle = Battle.objects.create(user=owner, conversation=three, prompt="你好", deployment_a=deployment,
                                   deployment_b=deployment, version_a=version, version_b=version)
    tool = HttpTool.objects.create(owner=owner, name="天气", url_template="http://127.0.0.1/w", parameters={})
    return {
        "token_id": token.pk, "kind": "diagnostics", "job_id": job.pk, "dataset_id": dataset.pk, "upload_id": upload.pk,
        "version_id": version.pk, "dataset_version_id": data.pk, "model_id": model.pk, "name": "config.json",
        "preset_id": preset.pk, "key": str(preset.pk), "suite_id": suite.suite_id, "fmt": "json",
        "run_id": run.pk, "bv_id": benchmark.pk, "index": 0, "benchmark_id": benchmark.benchmark_id,
        "summary_id": summary.pk, "conversation_id": conversation.pk, "message_id": asked.pk,
        "comparison_id": comparison.pk, "battle_id": battle.pk, "tool_id": tool.pk, "key_id": key.pk,
        "deployment_id": deployment.pk, "action": "stop", "slug": "datasets",
    }


# English still on the zh-hans pages, page by page, until it is translated (a ratchet: a new word
# fails the test, and so does a word listed here that is gone). Where it comes from: the status,
# kind and dimension labels of the models' choices (apps/*/models.py: wrap their labels in
# gettext_lazy), the field names, help and descriptions the Django-free core returns (workers/core:
# English by design; translate at the page only where they are a fixed set), f-string messages
# in forms and views, and the JavaScript strings (no djangojs catalogue yet).
KNOWN_LEFT = {
    '/': 'Evaluate Evaluation Model Nothing Queued Replica Succeeded agent cpu gpu replica running serve training',
    '/datasets/1/': 'choice multiple upload',
    '/datasets/generate/': 'messages',
    '/datasets/upload/': 'Eval Lines alpaca column field messages sharegpt',
    '/datasets/versions/1/': 'Evaluation benchmark choice gram made multiple the upload',
    '/deployments/': 'Ready serve',
    '/deployments/1/': 'Ready for make queue queued run running serve start studio the with worker',
    '/deployments/new/': (
        'Base agent cpu device dtype for gpu make queue run running serve start studio the with '
        'worker'),
    '/jobs/': (
        'Adapter Agent Arena Built Cancelled Dataset Evaluate Evaluation Failed Model Pipeline '
        'Quantization Queued Replica Running Succeeded Training Worker benchmarks cleaning '
        'diagnostics generation gpu import merge probe ratings replica serve training turn'),
    '/jobs/1/': 'Succeeded training',
    '/jobs/new/diagnostics/': 'cpu diagnostics gpu probe',
    '/leaderboards/': 'Succeeded starter',
    '/leaderboards/benchmarks/': 'Knowledge',
    '/leaderboards/benchmarks/1/': 'Knowledge choice likelihood multiple',
    '/leaderboards/benchmarks/1/edit/': (
        'Agent Chinese Code Exam Knowledge Language Math Reasoning The Understanding Which against '
        'agent answer apply below benchmark benchmarks bits boxed byte calculator call calls '
        'character characters chat choice choose chosen code completion dataset each entry extractor '
        'final first for generation greedy judge last letter likelihood log mean model most multiple '
        'nAnswer none number only option options order output over own pass pattern per perplexity '
        'point probabilities prompt prompts question rates regex result row rows run sandbox score '
        'scorer settings shot sliding subject sum task tests text that the then think tool version '
        'window with zero'),
    '/leaderboards/benchmarks/new/': (
        'Agent Chinese Code Exam Knowledge Language Math Reasoning The Understanding Which against '
        'agent answer apply below benchmark benchmarks bits boxed byte calculator call calls '
        'character characters chat choice choose chosen code completion dataset each entry extractor '
        'final first for generation greedy judge last letter likelihood log mean model most multiple '
        'nAnswer none number only option options order output over own pass pattern per perplexity '
        'point probabilities prompt prompts question rates regex result row rows run sandbox score '
        'scorer settings shot sliding subject sum task tests text that the then think tool version '
        'window with zero'),
    '/leaderboards/evaluate/': (
        'Default Fewer Likelihood Range Rows and answer base benchmark benchmarks blank choose code '
        'each every from generate generation greedy ignore interval judge may model nothing '
        'parameters per perplexity quicker range ready row rows run same scored set the time wider '
        'write'),
    '/leaderboards/import/': 'dataset metric mode outputs run summary version',
    '/leaderboards/runs/': 'Succeeded',
    '/leaderboards/runs/1/': (
        'Evaluate Evaluation Succeeded This accuracy cannot checked contamination done elsewhere '
        'evaluation has imported lineage registry run scores studio the trained training unknown '
        'version'),
    '/leaderboards/runs/1/benchmarks/1/samples/': 'accuracy',
    '/leaderboards/runs/1/progress/': (
        'This accuracy cannot checked contamination done elsewhere has imported lineage studio the '
        'trained training unknown version'),
    '/leaderboards/suites/': 'groups summary',
    '/leaderboards/suites/1/': 'Knowledge Succeeded',
    '/leaderboards/suites/1/board/': (
        'Adapter Base Deployment External Imported Knowledge Merged Quantized This any anyone base '
        'cannot checked choose contamination elsewhere endpoint has hash imported knowledge lineage '
        'parameters served studio the trained training unknown version'),
    '/leaderboards/suites/1/edit/': 'Knowledge',
    '/leaderboards/suites/new/': 'Knowledge',
    '/models/': 'Adapter Base Merged Quantized',
    '/models/1/': (
        'Base This base cannot checked contamination elsewhere folder has import imported lineage '
        'production studio the trained training unknown version'),
    '/models/import/': (
        'Hub HuggingFaceTB Instruct The archive bin directory folder hub import model needs network '
        'packaged pickle pth starter the uploaded'),
    '/models/versions/1/': (
        'Base Model This cannot checked contamination elsewhere folder has import imported lineage '
        'queued replica serving studio the trained training unknown uses version'),
    '/playground/': (
        'Action Blank Calculator Date Default Document Input Instructions Observation Python The '
        'Thought Units With about agent and answer any arithmetic attach auto before blocks call '
        'calls characters chat choose cited conversation current data date default deployment '
        'documents each else embeddings eval exact for has hybrid its knows length limits longest '
        'make mass memory model most native network never none one own parentheses per powers program '
        'queue range renders run running runs sandbox search sees serve short size start stops studio '
        'temperature template text the there this time tool tools volume where with word worker works '
        'writes you zone'),
    '/playground/c/1/': (
        'Action Blank Calculator Date Default Document Input Instructions Observation Python Ready '
        'The Thought Units With about agent and answer any arithmetic attach auto before blocks call '
        'calls characters chat cited cites conversation current data date default deployment document '
        'documents each else embeddings eval exact file finds has hybrid its knows length limits '
        'longest mass memory model most native network never none one own parentheses passages per '
        'powers program range renders runs sandbox search sees short size stops temperature template '
        'text the them there this time tool tools volume where with word works writes you zone'),
    '/playground/compare/': (
        'Default The What With about answer asked call characters each every for longest make model '
        'most per queue range run running serve start stops studio the there tools with word worker'),
    '/playground/feedback/': 'chosen preference rejected sft',
    '/playground/tools/': 'api city example get name object org schema weather',
    '/training/': 'Succeeded compare lora run sft',
    '/training/1/': 'Succeeded lora sft shell spec training',
    '/training/new/': (
        'Batch Epochs Eval Grad Learning Lora Save Seed accum agent alpha base choice continued cpt '
        'cpu dpo dropout every fine from full gpu length lora multiple none online parameters '
        'pretrain pretraining qlora rate ratio rows scratch serve sft size small steps style '
        'supervised tiny tuning warmup worker'),
    '/training/presets/': 'cpt dpo full learning lora pretrain qlora rate sft small style tiny',
    '/training/presets/1/': 'learning rate',
}


# Pages the loop cannot open with the objects above, and why.
NOT_OPENED = {
    "dataset-version-render": "renders with a real tokenizer (a model folder with one): tests/datasets",
    "section": "a placeholder for sections still to come; none is registered now (apps/studio/sections.py)",
    "job-log": "a plain-text download of the job's log file",
    "version-file": "a download of one file of a model version",
    "prometheus-metrics": "Prometheus text for scrapers, with its own credentials",
}


def site_patterns(resolver=None, prefix=""):
    """(route, name) of every page of the site (the admin, the JSON API and /v1 excluded)."""
    for entry in (resolver or get_resolver()).url_patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            yield from site_patterns(entry, route)
        elif isinstance(entry, URLPattern) and entry.name and not route.startswith(("admin/", "api/", "v1/", "static")):
            yield route, entry.name


def test_every_page_a_signed_in_user_reaches_reads_as_chinese(client, users, studio):
    login_client(client, users["owner"])
    client.post("/accounts/language/", {"language": "zh-hans", "next": "/"})
    found, gone, broken, pages = {}, {}, [], 0
    names = frozenset(user.username for user in users.values())
    for route, name in sorted(site_patterns()):
        if name in NOT_OPENED:
            continue
        kwargs = {k: studio["dataset_version_id"] if k == "version_id" and name.startswith("dataset") else studio[k]
                  for k in re.findall(r"<(?:\w+:)?(\w+)>", route)}
        path = reverse(name, kwargs=kwargs)
        response = client.get(path)
        if response.status_code not in (200, 302, 405):
            broken.append(f"{path} ({name}) answered {response.status_code}")
        if response.status_code != 200 or not response["Content-Type"].startswith("text/html"):
            continue  # a POST-only action, a redirect or a download: no page of its own
        pages += 1
        words = set(english_words(response.content.decode(), user_data=names))
        known = set(KNOWN_LEFT.get(path, "").split())
        if words - known:
            found[path] = sorted(words - known)
        if known - words:
            gone[path] = sorted(known - words)
    assert not broken, "\n".join(broken)
    assert pages >= 50
    listed = lambda pages: "\n".join(f"{p}: {' '.join(w)}" for p, w in pages.items())  # noqa: E731
    assert not found, "English left on zh-hans pages:\n" + listed(found)
    assert not gone, "Translated now: take these off KNOWN_LEFT:\n" + listed(gone)


def test_the_reader_skips_code_and_what_is_marked_not_to_translate():
    html = ('<p>数据集 <span translate="no">my dataset</span> <code>curl http</code></p>'
            '<input placeholder="name here"><button title="Delete">删除</button>')
    assert english_words(html) == ["Delete", "here", "name"]


def test_the_javascript_catalogue_gives_the_scripts_their_strings_in_chinese(client, users):
    login_client(client, users["owner"])
    page = client.get("/jobs/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert 'src="/jsi18n/"' in page  # before the scripts that call gettext()
    catalogue = client.get("/jsi18n/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert '"reconnecting\\u2026": "\\u91cd\\u65b0\\u8fde\\u63a5\\u4e2d\\u2026"' in catalogue  # 重新连接中…
