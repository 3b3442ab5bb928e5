"""Stage 6 of cleaning: personal information masked with fixed tokens, counted by kind."""
import io
import json

import pytest

from workers.core.data.cleaning import CleaningSpec, run_cleaning
from workers.core.data.cleaning.pii import id_card_ok, luhn_ok, mask_pii
from workers.core.reporting import ConsoleReporter

CASES = [
    # (text, masked, counts)
    ("Mail john.doe@example.com or jane_d+tag@mail.example.org now.",
     "Mail [EMAIL] or [EMAIL] now.", {"email": 2}),
    ("请联系 zhang.san@163.com 或者 13812345678@qq.com。",
     "请联系 [EMAIL] 或者 [EMAIL]。", {"email": 2}),
    ("Call +1 (555) 123-4567, 555-123-4567 or +44 20 7946 0958.",
     "Call [PHONE], [PHONE] or [PHONE].", {"phone": 3}),
    ("手机号13812345678，或者+86 138 1234 5678，座机010-12345678。",
     "手机号[PHONE]，或者[PHONE]，座机[PHONE]。", {"phone": 3}),
    ("Her resident ID is 11010519491231002X.", "Her resident ID is [ID].", {"id_card": 1}),
    ("身份证号440306199003071232，请核对。", "身份证号[ID]，请核对。", {"id_card": 1}),
    ("Card 4111 1111 1111 1111, 4111-1111-1111-1111 and Amex 378282246310005.",
     "Card [CARD], [CARD] and Amex [CARD].", {"credit_card": 3}),
    ("信用卡号6011111111111117已冻结。", "信用卡号[CARD]已冻结。", {"credit_card": 1}),
    ("Server 192.168.1.20, IPv6 2001:db8:85a3::8a2e:370:7334, fe80::1 and ::ffff:192.0.2.1.",
     "Server [IP], IPv6 [IP], [IP] and [IP].", {"ip": 4}),
    ("服务器地址是10.0.0.1，IPv6地址2001:0db8:0000:0000:0000:ff00:0042:8329。",
     "服务器地址是[IP]，IPv6地址[IP]。", {"ip": 2}),
]


@pytest.mark.parametrize("text, masked, counts", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_each_kind_is_masked_in_english_and_chinese_text_and_counted(text, masked, counts):
    found = {}
    assert mask_pii(text, found) == masked
    assert found == counts


@pytest.mark.parametrize("text", [
    "In 1999 the price was $12.99 (or ¥1,299.00); on 2024-05-01 at 12:30:45 we shipped v1.2.3 to 3,000,000 users.",
    "圆周率约为3.14159265358979，中国人口1411778724人，深圳区号0755，2023年GDP增长5.2%。",
    "Order 2023051512345678 shipped; ISBN 978-3-16-148410-0; call ext. 1234; room 101-102.",
    "std::vector<int> a::b; dead::beef; ratio 16:9; score 3:2; see RFC 4291 section 2.2.",
    "Not a card: 1234 5678 9012 3456. Not an ID: 110105194912310021. Not a phone: 12345678901.",
])
def test_ordinary_numbers_years_prices_dates_times_and_versions_are_left_alone(text):
    found = {}
    assert mask_pii(text, found) == text
    assert found == {}


def test_checksums_decide_between_a_number_and_an_identifier():
    assert id_card_ok("11010519491231002X") and not id_card_ok("110105194912310021")
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")


def test_in_a_chat_record_pii_is_masked_inside_message_contents_and_the_structure_is_unchanged(tmp_path):
    record = {
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "My email is li.lei@example.cn and my phone is 13912345678. Please help."},
            {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {
                "name": "send_mail", "arguments": json.dumps({"to": "li.lei@example.cn"})}}]},
            {"role": "tool", "name": "send_mail", "content": "sent from 10.1.2.3"},
            {"role": "assistant", "content": "好的，已经发送到你的邮箱。"},
        ],
        "tools": [{"type": "function", "function": {"name": "send_mail", "parameters": {"type": "object"}}}],
        "meta": {"line": 7, "id": "conv-7"},
    }
    src = tmp_path / "chat.jsonl"
    src.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    spec = CleaningSpec(quality=False, dedup_exact=False, dedup_near=False, decontaminate=False)
    report = run_cleaning(src, tmp_path / "out.jsonl", "chat", spec, ConsoleReporter(stream=io.StringIO()))
    out = json.loads((tmp_path / "out.jsonl").read_text(encoding="utf-8"))
    expected = json.loads(json.dumps(record))
    expected["messages"][1]["content"] = "My email is [EMAIL] and my phone is [PHONE]. Please help."
    expected["messages"][2]["tool_calls"][0]["function"]["arguments"] = json.dumps({"to": "[EMAIL]"})
    expected["messages"][3]["content"] = "sent from [IP]"
    assert out == expected
    stage = report["stages"][5]
    assert stage["name"] == "pii" and stage["modified_docs"] == 1
    assert stage["pii"] == {"email": 2, "phone": 1, "id_card": 0, "credit_card": 0, "ip": 1}
    assert stage["examples"] == [{"line": 7, "reason": "masked email x2, ip x1, phone x1",
                                  "text": "You are a helpful assistant.\nMy email is [EMAIL] and my phone is [PHONE]. "
                                          "Please help.\n\nsent from [IP]\n好的，已经发送到你的邮箱。"}]
