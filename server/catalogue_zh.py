"""Simplified Chinese for the catalogue's free text: descriptions, value units, what is never
recorded, legal bases and what leaves the device.

The catalogue (`shared.catalogue`) stays the one source of truth in English; this table is keyed
by its English text, so a changed or added sentence has no translation until someone writes one,
and `tests/test_api_i18n.py` fails until then (a reviewer never reads half a page in English).
"""

from __future__ import annotations

from fedchurn.shared.catalogue import CATEGORIES

__all__ = ["ZH", "catalogue_text", "missing"]

ZH: dict[str, str] = {
    # descriptions
    "When the app is opened and for how long.": "应用何时被打开以及使用了多长时间。",
    "Which product features are used, as counts per feature group.": "使用了哪些产品功能（按功能组计数）。",
    "Time spent reading, watching or listening to content in the app.": (
        "在应用内阅读、观看或收听内容所花的时间。"
    ),
    "That the user published a post, photo or video (not the content itself).": (
        "用户发布了帖子、照片或视频这一事实（不含内容本身）。"
    ),
    "Likes and other one-tap reactions, as counts.": "点赞等一键互动的次数。",
    "That the user wrote a comment (not its text).": "用户发表了评论这一事实（不含评论文字）。",
    "That the user shared an item inside or outside the app.": "用户在应用内或向应用外分享了内容这一事实。",
    "How many private messages the user sent; a drop of ~62% precedes churn on social apps.": (
        "用户发送的私信数量；在社交类应用中，流失前私信量通常下降约 62%。"
    ),
    "That the user edited their profile; a drop of ~81% precedes churn on social apps.": (
        "用户编辑了个人资料这一事实；在社交类应用中，流失前资料编辑通常减少约 81%。"
    ),
    "How many friends or follows were added or lost; social users churn when >15% of friends leave.": (
        "新增或失去的好友、关注数量；当超过 15% 的好友离开时，社交型用户容易流失。"
    ),
    "That the user searched, and whether a result was opened.": (
        "用户进行了搜索这一事实，以及是否打开了搜索结果。"
    ),
    "Product page views, repeated views of the same product, cart edits and abandoned carts.": (
        "商品页浏览、对同一商品的重复浏览、购物车修改以及放弃的购物车。"
    ),
    "Completed purchases and refunds, and their amount.": "已完成的购买和退款及其金额。",
    "Discounts the user was offered, when they start and end, and coupons redeemed.": (
        "向用户提供的折扣及其起止时间，以及已使用的优惠券。"
    ),
    "Whether notifications are delivered, opened, dismissed, and how recall messages are answered.": (
        "通知是否送达、被打开或被忽略，以及用户如何回应召回消息。"
    ),
    "That the user contacted support and whether the issue was resolved.": (
        "用户联系了客服这一事实，以及问题是否得到解决。"
    ),
    (
        "Coarse, slowly-changing context: device tier, registration channel, number of same-category "
        "apps installed, whether notifications are enabled."
    ): "粗粒度、变化缓慢的背景信息：设备档次、注册渠道、已安装的同类应用数量、是否开启通知。",
    # value units of the actions
    "0 low, 1 mid, 2 high, 3 tablet": "0 低端，1 中端，2 高端，3 平板",
    "0 or 1": "0 或 1",
    "0 organic, 1 paid, 2 referral": "0 自然，1 付费，2 推荐",
    "1": "1",
    "amount in the app's currency": "金额（应用内货币）",
    "amount refunded, in the app's currency": "退款金额（应用内货币）",
    "duration in seconds": "时长（秒）",
    "minutes": "分钟",
    "number of friends added": "新增好友数",
    "number of friends lost": "失去好友数",
    "number of same-category apps installed": "已安装的同类应用数",
    # what every stored event holds
    "timestamp (UTC, seconds)": "时间戳（UTC，秒）",
    "UTC offset of the device clock (minutes)": "设备时钟的 UTC 偏移（分钟）",
    "action": "动作",
    "value": "数值",
    # never recorded
    "IP address": "IP 地址",
    "advertising identifiers": "广告标识符",
    "attachments": "附件",
    "billing address": "账单地址",
    "captions": "配文",
    "card numbers": "银行卡号",
    "cart contents": "购物车内容",
    "comment text": "评论文字",
    "contact details": "联系方式",
    "contact lists": "通讯录",
    "content text or media": "内容的文字或媒体",
    "conversation identifiers": "会话标识符",
    "coupon codes": "优惠券码",
    "device identifiers": "设备标识符",
    "friend identifiers": "好友标识符",
    "items bought": "所购商品",
    "location tags": "位置标签",
    "media": "媒体文件",
    "mentioned users": "被提及的用户",
    "message text": "消息文字",
    "names": "姓名",
    "names of installed apps": "已安装应用的名称",
    "notification text": "通知文字",
    "payment method": "支付方式",
    "photos": "照片",
    "precise location": "精确位置",
    "prices seen": "看到的价格",
    "profile contents": "个人资料内容",
    "push token": "推送令牌",
    "recipients": "接收者",
    "results shown": "显示的结果",
    "screen contents": "屏幕内容",
    "search text": "搜索文字",
    "share target or recipient": "分享目标或接收者",
    "shared item": "被分享的内容",
    "the commented item": "被评论的内容",
    "the content itself": "内容本身",
    "ticket text": "工单文字",
    "typed input": "输入的文字",
    "what was reacted to": "互动的对象",
    "which item was consumed": "消费了哪项内容",
    "which products": "哪些商品",
    "who the friends are": "好友是谁",
    "whose content it was": "内容的作者",
    # legal bases
    "GDPR Art. 6(1)(a) consent: personalised retention offers and recall messages": (
        "GDPR 第 6(1)(a) 条 同意：个性化的挽留优惠和召回消息"
    ),
    "GDPR Art. 6(1)(b) contract performance for the purchase; 6(1)(f) for its use here": (
        "GDPR 第 6(1)(b) 条 为履行购买合同；在此处的使用依据第 6(1)(f) 条"
    ),
    "GDPR Art. 6(1)(f) legitimate interests: keeping the service working and improving it": (
        "GDPR 第 6(1)(f) 条 正当利益：维持服务运行并加以改进"
    ),
    # what leaves the device
    (
        "Never raw. Only its contribution to a clipped, quantised and masked model update, usable by "
        "the server only inside a sum over a cohort of devices; and, in evaluation cohorts, a histogram "
        "of scores summed the same way."
    ): (
        "从不以原始形式离开。只有它对模型更新的贡献会离开设备：该更新经过裁剪、量化和掩码，服务器只能在"
        "一批设备的总和中使用它；在评估批次中，还有以同样方式求和的分数直方图。"
    ),
}


def catalogue_text(lang: str, text: str) -> str:
    """`text` (a catalogue sentence) in `lang`; English is the source."""
    return text if lang == "en" else ZH[text]


def missing() -> list[str]:
    """Catalogue sentences without a Chinese translation (a test keeps this empty)."""
    texts = set()
    for c in CATEGORIES:
        texts |= {c.description, c.legal_basis, c.leaves_device, *c.never_recorded, *c.recorded_fields}
        texts |= {a.value for a in c.actions}
    return sorted(t for t in texts if t not in ZH)
