"""简体中文 in a real browser: the header's switcher turns the interface Chinese on every main page
(header and page title, with a CJK font, so it shows as Chinese in screenshots, not boxes), the
scripts' strings too (the JavaScript catalogue), keeps it across pages, and switches back."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.test_double_submit import log_in
from tests.browser.test_job_pages import screenshot

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.integration]

NAV = {"/": "仪表盘", "/start/": "快速上手", "/jobs/": "任务", "/datasets/": "数据集", "/models/": "模型",
       "/training/": "训练", "/deployments/": "部署", "/leaderboards/": "排行榜", "/playground/": "对话实验室",
       "/storage/": "存储"}
# Each main page's own title in Chinese (tests/site/test_i18n_pages.py checks every word of every page).
H1 = {"/": "仪表盘", "/start/": "快速上手：从数据到智能体", "/jobs/": "任务", "/datasets/": "数据集", "/models/": "模型",
      "/training/": "训练", "/deployments/": "部署", "/leaderboards/": "排行榜", "/playground/": "对话实验室",
      "/storage/": "存储"}


def test_switching_to_chinese_translates_the_studio_on_every_main_page_and_back(stack, make_user, page):
    make_user("lin")
    url = stack.web()
    log_in(page, url, "lin")
    page.click("#language-zh-hans")
    expect(page.locator("html")).to_have_attribute("lang", "zh-hans")
    for path, word in NAV.items():
        page.goto(url + path)
        expect(page.locator("header")).to_contain_text(word)
        expect(page.locator("header nav")).not_to_contain_text("Dashboard")
        expect(page.locator("main h1").first).to_have_text(H1[path])
        assert page.evaluate("gettext('reconnecting…')") == "重新连接中…", path
    page.goto(url + "/start/")
    expect(page.locator("h1")).to_have_text("快速上手：从数据到智能体")
    screenshot(page, "quickstart-zh.png")
    page.click("#language-en")
    expect(page.locator("h1")).to_have_text("Quick start: from data to an agent")
    screenshot(page, "quickstart.png")
