"""What each button under a result asks for, double presses, and where message pictures may come from."""

from __future__ import annotations

import pytest

from bot.core.refusals import PicturesExpired
from bot.core.remix import DoublePress, RemixRefused, next_preset, remix
from bot.intake.uploads import discord_media_url
from nst_core.params import StylizeParams

ALL = ("fast", "balanced", "best")
PARENT = StylizeParams(preset="fast", strength=2.0, preserve_colors=False, seed=11)


def test_each_button_changes_one_thing_and_keeps_the_seed_except_again():
    again = remix("again", PARENT, max_strength=5, allowed_presets=ALL, new_seed=lambda: 99)
    assert (again.preset, again.strength, again.preserve_colors, again.seed) == ("fast", 2.0, False, 99)
    assert remix("more", PARENT, max_strength=5, allowed_presets=ALL).strength == 3.0
    assert remix("less", PARENT, max_strength=5, allowed_presets=ALL).strength == pytest.approx(1.3333)
    colours = remix("colours", PARENT, max_strength=5, allowed_presets=ALL)
    assert colours.preserve_colors and colours.seed == 11
    assert remix("sharper", PARENT, max_strength=5, allowed_presets=ALL).preset == "balanced"


def test_limits_hold_more_style_stops_at_the_ceiling_and_sharper_at_the_servers_preset():
    assert remix("more", PARENT, max_strength=2.5, allowed_presets=ALL).strength == 2.5  # clamped, not 3
    with pytest.raises(RemixRefused, match="most style allowed here"):
        remix("more", PARENT.replace(strength=2.5), max_strength=2.5, allowed_presets=ALL)
    with pytest.raises(RemixRefused, match="least style"):
        remix("less", PARENT.replace(strength=0.1), max_strength=5, allowed_presets=ALL)
    with pytest.raises(RemixRefused, match="no sharper preset"):
        remix("sharper", PARENT, max_strength=5, allowed_presets=("fast",))
    with pytest.raises(RemixRefused, match="no longer allows the `balanced` preset"):
        remix("again", PARENT.replace(preset="balanced"), max_strength=5, allowed_presets=("fast",))
    assert next_preset("best", ALL) is None and next_preset("fast", ("fast", "balanced")) == "balanced"


def test_a_quick_second_press_points_at_the_first_job_and_a_failed_press_may_be_retried():
    now = [0.0]
    presses = DoublePress(window_s=10, clock=lambda: now[0])
    assert presses.first(1, "abc", "again") == (True, None)
    assert presses.first(1, "abc", "again") == (False, None)  # still being made
    assert presses.first(2, "abc", "again") == (True, None)  # another member: their own job
    assert presses.first(1, "abc", "more") == (True, None)  # another button
    presses.made(1, "abc", "again", "def")
    assert presses.first(1, "abc", "again") == (False, "def")
    presses.made(1, "abc", "more", None)  # refused: pressing again may try again
    assert presses.first(1, "abc", "more") == (True, None)
    now[0] = 11.0
    assert presses.first(1, "abc", "again") == (True, None)  # a deliberate press later makes another


@pytest.mark.parametrize("url, allowed", [
    ("https://cdn.discordapp.com/attachments/1/2/cat.png?ex=1", True),
    ("https://media.discordapp.net/attachments/1/2/cat.png", True),
    ("https://images-ext-1.discordapp.net/external/x/https/example.com/a.png", True),
    ("http://cdn.discordapp.com/attachments/1/2/cat.png", False),  # not https
    ("https://cdn.discordapp.com.evil.example/a.png", False),
    ("https://evil.example/cdn.discordapp.com/a.png", False),
    ("http://169.254.169.254/latest/meta-data", False),
    ("http://127.0.0.1:8080/attachments/a.png", False),  # the bot's own network
    ("not a url", False),
])
def test_pictures_from_messages_come_only_from_discords_media_hosts(url, allowed):
    assert discord_media_url(url) is allowed


def test_a_stand_in_discord_is_trusted_only_at_its_own_address():
    base = "http://127.0.0.1:8080/api/v10"
    assert discord_media_url("http://127.0.0.1:8080/attachments/a.png", base)
    assert not discord_media_url("http://127.0.0.1:8081/attachments/a.png", base)


def test_expired_pictures_are_counted_under_their_own_reason():
    assert PicturesExpired(3600).reason == "expired"


def _views(reuse_s: float = 3600.0, allowed=ALL, max_strength: float = 5.0):
    from types import SimpleNamespace

    from bot.ui.buttons import ResultViews

    rules = SimpleNamespace(allowed_presets=lambda: allowed)
    return ResultViews(store=SimpleNamespace(reuse_s=reuse_s), settings=SimpleNamespace(rules=lambda g: rules),
                       max_strength=max_strength)


def _buttons(view) -> list[str]:
    return [item.custom_id.split(":")[1] for item in view.children]


async def test_the_buttons_under_a_result_leave_out_what_cannot_work():
    from bot.core.job import Job

    def result(**params) -> Job:
        return Job(job_id="00000000ab", user_id=1, channel_id=2, guild_id=3, application_id=4, interaction_token="",
                   token_created_at=0.0, upload_limit=1 << 20, params=StylizeParams(**{"preset": "fast", **params}),
                   content=b"", style=b"", style_label="s")

    everything = ["again", "more", "less", "colours", "sharper", "compare", "delete"]
    assert _buttons(_views()(result())) == everything
    assert "sharper" not in _buttons(_views()(result(preset="best")))  # nothing sharper
    assert "sharper" not in _buttons(_views(allowed=("fast",))(result()))  # the server forbids it
    assert "more" not in _buttons(_views(max_strength=2)(result(strength=2.0)))
    assert "less" not in _buttons(_views()(result(strength=0.1)))
    assert _buttons(_views(reuse_s=0)(result())) == ["delete"]  # nothing kept to remix
