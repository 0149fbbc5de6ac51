"""The 17 categories of behaviour data a device records: the single source of truth.

The transparency API, the CLI, the event validator and the feature specification all read
this module; nothing else lists categories. The catalogue validates itself at import, so a
broken edit fails the first test that imports it rather than a reviewer's page.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = [
    "BY_ID",
    "CATALOGUE_VERSION",
    "CATEGORIES",
    "CATEGORY_IDS",
    "CONSENT_MARKETING",
    "LEAVES_NOTHING_RAW",
    "LI_SERVICE",
    "N_CATEGORIES",
    "PURPOSES",
    "P_RETENTION",
    "P_SCORING",
    "P_TRAINING",
    "P_TRANSPARENCY",
    "Action",
    "CatalogueError",
    "Category",
    "as_dict",
    "category_index",
    "validate",
]

CATALOGUE_VERSION = "1.0.0"
N_CATEGORIES = 17

# Legal bases (GDPR Art. 6). Marketing uses consent; service operation uses legitimate interests.
LI_SERVICE = "GDPR Art. 6(1)(f) legitimate interests: keeping the service working and improving it"
CONSENT_MARKETING = "GDPR Art. 6(1)(a) consent: personalised retention offers and recall messages"

# Purposes (stable ids; `PURPOSES` explains each).
P_SCORING = "churn_risk_scoring"
P_TRAINING = "federated_model_training"
P_RETENTION = "retention_policy"
P_TRANSPARENCY = "user_transparency"
PURPOSES: dict[str, str] = {
    P_SCORING: "Score the risk that this user stops using the app, on the device.",
    P_TRAINING: "Help train the shared churn model; only an encrypted, aggregated update leaves.",
    P_RETENTION: "Decide on the device whether and when to send a recall message.",
    P_TRANSPARENCY: "Show the user, on their own device, what is stored and let them export or erase it.",
}

LEAVES_NOTHING_RAW = (
    "Never raw. Only its contribution to a clipped, quantised and masked model update, usable by "
    "the server only inside a sum over a cohort of devices; and, in evaluation cohorts, a histogram "
    "of scores summed the same way."
)


@dataclass(frozen=True)
class Action:
    """One kind of event within a category, with the meaning of its numeric value."""

    name: str
    value: str  # what the numeric value of the event means (unit), "1" when it is a plain count


@dataclass(frozen=True)
class Category:
    id: str
    number: int
    name_en: str
    name_zh: str
    description: str
    actions: tuple[Action, ...]
    recorded_fields: tuple[str, ...]
    never_recorded: tuple[str, ...]
    purposes: tuple[str, ...]
    legal_basis: str
    retention_days: int
    leaves_device: str
    apple_privacy_label: str
    google_data_safety: str
    dpv_category: str

    def action_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.actions)


_COMMON_FIELDS = ("timestamp (UTC, seconds)", "UTC offset of the device clock (minutes)", "action", "value")
_ALL_PURPOSES = (P_SCORING, P_TRAINING, P_RETENTION, P_TRANSPARENCY)
_DPV = "https://w3id.org/dpv/pd#"


def _c(
    number: int,
    id: str,
    name_en: str,
    name_zh: str,
    description: str,
    actions: tuple[tuple[str, str], ...],
    never: tuple[str, ...],
    retention_days: int,
    apple: str,
    google: str,
    dpv: str,
    purposes: tuple[str, ...] = _ALL_PURPOSES,
    legal_basis: str = LI_SERVICE,
) -> Category:
    return Category(
        id=id,
        number=number,
        name_en=name_en,
        name_zh=name_zh,
        description=description,
        actions=tuple(Action(n, v) for n, v in actions),
        recorded_fields=_COMMON_FIELDS,
        never_recorded=never,
        purposes=purposes,
        legal_basis=legal_basis,
        retention_days=retention_days,
        leaves_device=LEAVES_NOTHING_RAW,
        apple_privacy_label=apple,
        google_data_safety=google,
        dpv_category=_DPV + dpv,
    )


_NO_CONTENT = ("content text", "content identifiers", "other people's identifiers")

# The table reads best as a table.
# fmt: off
CATEGORIES: tuple[Category, ...] = (
    _c(1, "sessions", "App sessions", "应用会话",
       "When the app is opened and for how long.",
       (("session", "duration in seconds"),),
       ("screen contents", "precise location", "IP address"), 120,
       "Usage Data: Product Interaction", "App activity: App interactions", "ServiceConsumptionBehavior"),
    _c(2, "feature_usage", "Feature usage", "功能使用",
       "Which product features are used, as counts per feature group.",
       (("feature_used", "1"), ("feature_path_step", "1")),
       ("screen contents", "typed input"), 90,
       "Usage Data: Product Interaction", "App activity: App interactions", "ServiceConsumptionBehavior"),
    _c(3, "content_consumption", "Content consumption", "内容消费",
       "Time spent reading, watching or listening to content in the app.",
       (("content_viewed", "minutes"),),
       ("which item was consumed", "content text or media"), 90,
       "Usage Data: Product Interaction", "App activity: App interactions", "ServiceConsumptionBehavior"),
    _c(4, "content_creation", "Content creation", "内容创作",
       "That the user published a post, photo or video (not the content itself).",
       (("post_created", "1"),),
       ("the content itself", "captions", "media", "location tags"), 90,
       "User Content: Other User Content", "App activity: Other user-generated content", "SocialMedia"),
    _c(5, "reactions", "Reactions", "互动点赞",
       "Likes and other one-tap reactions, as counts.",
       (("reaction", "1"),),
       ("what was reacted to", "whose content it was"), 90,
       "Usage Data: Product Interaction", "App activity: App interactions", "Like"),
    _c(6, "comments", "Comments", "评论",
       "That the user wrote a comment (not its text).",
       (("comment", "1"),),
       ("comment text", "the commented item", "mentioned users"), 90,
       "Usage Data: Product Interaction", "App activity: App interactions", "SocialMediaCommunication"),
    _c(7, "shares", "Shares", "分享",
       "That the user shared an item inside or outside the app.",
       (("share", "1"),),
       ("shared item", "share target or recipient"), 90,
       "Usage Data: Product Interaction", "App activity: App interactions", "SocialMedia"),
    _c(8, "private_messages", "Private messages (metadata)", "私信（元数据）",
       "How many private messages the user sent; a drop of ~62% precedes churn on social apps.",
       (("message_sent", "1"),),
       ("message text", "attachments", "recipients", "conversation identifiers"), 35,
       "Usage Data: Product Interaction", "App activity: App interactions", "SocialMediaCommunication"),
    _c(9, "profile_updates", "Profile updates", "资料更新",
       "That the user edited their profile; a drop of ~81% precedes churn on social apps.",
       (("profile_updated", "1"),),
       ("profile contents", "photos", "names"), 90,
       "Usage Data: Product Interaction", "App activity: App interactions", "IndividualProfile"),
    _c(10, "social_graph", "Social graph changes", "社交关系变化",
       "How many friends or follows were added or lost; social users churn when >15% of friends leave.",
       (("friend_added", "number of friends added"), ("friend_lost", "number of friends lost")),
       ("who the friends are", "friend identifiers", "contact lists"), 90,
       "Contacts", "Contacts", "Friend"),
    _c(11, "search", "In-app search", "应用内搜索",
       "That the user searched, and whether a result was opened.",
       (("search", "1"), ("search_result_opened", "1")),
       ("search text", "results shown"), 60,
       "Search History", "App activity: In-app search history", "BrowsingBehavior"),
    _c(12, "commerce_browsing", "Shopping browsing and cart", "购物浏览与购物车",
       "Product page views, repeated views of the same product, cart edits and abandoned carts.",
       (("product_view", "1"), ("product_view_repeat", "1"), ("cart_edit", "1"),
        ("cart_abandon", "1"), ("checkout", "1")),
       ("which products", "prices seen", "cart contents"), 90,
       "Usage Data: Product Interaction", "App activity: App interactions", "BrowsingBehavior"),
    _c(13, "purchases", "Purchases", "购买",
       "Completed purchases and refunds, and their amount.",
       (("purchase", "amount in the app's currency"), ("refund", "amount refunded, in the app's currency")),
       ("items bought", "payment method", "card numbers", "billing address"), 120,
       "Purchases: Purchase History", "Financial info: Purchase history", "PurchasesAndSpendingHabit",
       legal_basis="GDPR Art. 6(1)(b) contract performance for the purchase; 6(1)(f) for its use here"),
    _c(14, "promotions", "Promotions and discounts", "促销与折扣",
       "Discounts the user was offered, when they start and end, and coupons redeemed.",
       (("discount_started", "1"), ("discount_ended", "1"), ("coupon_redeemed", "1")),
       ("coupon codes", "advertising identifiers"), 120,
       "Usage Data: Advertising Data", "App activity: Other actions", "PurchasesAndSpendingHabit",
       legal_basis=CONSENT_MARKETING),
    _c(15, "notifications", "Notifications and recall responses", "通知与召回响应",
       "Whether notifications are delivered, opened, dismissed, and how recall messages are answered.",
       (("notification_opened", "1"), ("notification_dismissed", "1"), ("recall_sent", "1"),
        ("recall_accepted", "1"), ("recall_rejected", "1")),
       ("notification text", "push token"), 120,
       "Usage Data: Product Interaction", "App activity: App interactions", "LinkClicked",
       legal_basis=CONSENT_MARKETING),
    _c(16, "support", "Support contacts", "客服联系",
       "That the user contacted support and whether the issue was resolved.",
       (("ticket_opened", "1"), ("ticket_resolved", "1")),
       ("ticket text", "attachments", "contact details"), 90,
       "User Content: Customer Support", "App activity: Other actions", "Communication"),
    _c(17, "device_context", "Device and install context", "设备与安装环境",
       "Coarse, slowly-changing context: device tier, registration channel, number of same-category "
       "apps installed, whether notifications are enabled.",
       (("device_tier", "0 low, 1 mid, 2 high, 3 tablet"),
        ("registration_channel", "0 organic, 1 paid, 2 referral"),
        ("same_category_apps", "number of same-category apps installed"),
        ("notifications_enabled", "0 or 1")),
       ("device identifiers", "names of installed apps", "IP address", "precise location"), 365,
       "Other Data", "App activity: Installed apps", "DeviceApplications"),
)
# fmt: on

BY_ID: dict[str, Category] = {c.id: c for c in CATEGORIES}
CATEGORY_IDS: tuple[str, ...] = tuple(c.id for c in CATEGORIES)


class CatalogueError(ValueError):
    """The catalogue breaks one of its own rules."""


def validate(categories: tuple[Category, ...] = CATEGORIES) -> None:
    """Check the rules every consumer relies on; raise `CatalogueError` naming the entry."""
    if len(categories) != N_CATEGORIES:
        raise CatalogueError(f"expected {N_CATEGORIES} categories, found {len(categories)}")
    seen: set[str] = set()
    for i, cat in enumerate(categories, start=1):
        where = f"category #{i} ({cat.id!r})"
        if cat.id in seen:
            raise CatalogueError(f"{where}: duplicate id")
        seen.add(cat.id)
        if cat.number != i:
            raise CatalogueError(f"{where}: number {cat.number} out of order")
        for f in fields(cat):
            value = getattr(cat, f.name)
            if value is None or (isinstance(value, str | tuple) and len(value) == 0):
                raise CatalogueError(f"{where}: field {f.name!r} is empty")
        if cat.retention_days < 35:
            # The feature windows reach back 28 days plus a week of slack.
            raise CatalogueError(f"{where}: retention {cat.retention_days} d is shorter than 35 d")
        names = cat.action_names()
        if len(set(names)) != len(names):
            raise CatalogueError(f"{where}: duplicate action names")
        if any(p not in PURPOSES for p in cat.purposes):
            raise CatalogueError(f"{where}: unknown purpose")


def category_index(category_id: str) -> int:
    """0-based index of a category; raises KeyError with the known ids."""
    try:
        return BY_ID[category_id].number - 1
    except KeyError:
        raise KeyError(f"unknown category {category_id!r}; known: {', '.join(CATEGORY_IDS)}") from None


def as_dict(cat: Category) -> dict[str, Any]:
    """A JSON-ready entry, including the features it feeds (from the feature specification)."""
    from fedchurn.shared.feature_spec import features_fed_by

    d = asdict(cat)
    d["actions"] = [asdict(a) for a in cat.actions]
    d["features_fed"] = list(features_fed_by(cat.id))
    d["purposes"] = [{"id": p, "description": PURPOSES[p]} for p in cat.purposes]
    for key in ("recorded_fields", "never_recorded"):
        d[key] = list(d[key])
    return d


validate()
