"""Fixtures for the langchain-aegis tests: the demo model, loaded once, and a set of realistic tools."""

from __future__ import annotations

import os

import pytest
from langchain_core.tools import BaseTool, StructuredTool, tool
from pydantic import BaseModel, Field

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def demo_encoder():
    """The demo model from the package's own encoder cache, so AegisEmbeddings("demo") reuses it."""
    from langchain_aegis._encoders import load_encoder

    return load_encoder("demo")


@tool
def get_weather_forecast(city: str, days: int = 3) -> str:
    """Get the weather forecast (temperature, rain, wind) for a city for the next few days."""
    return f"{city}: sunny for {days} days"


@tool
def convert_currency(amount: float, source: str, target: str) -> str:
    """Convert an amount of money from one currency to another at today's exchange rate."""
    return f"{amount} {source} = {amount * 1.1:.2f} {target}"


@tool
def send_email(to: str, subject: str, body: str) -> str:
    """Send an email message to a recipient with a subject and a body."""
    return f"sent to {to}"


@tool
def create_calendar_event(title: str, start: str, duration_minutes: int = 30) -> str:
    """Create a meeting or appointment in the user's calendar at a given date and time."""
    return f"event {title!r} at {start}"


@tool
def search_web(query: str) -> str:
    """Search the internet for pages about a topic and return the top results."""
    return f"results for {query}"


@tool
def translate_text(text: str, target_language: str) -> str:
    """Translate a piece of text into another language, such as French or Japanese."""
    return text


@tool
def run_sql_query(sql: str) -> str:
    """Run a read-only SQL query against the analytics database and return the rows."""
    return "0 rows"


@tool
def create_github_issue(repository: str, title: str, body: str) -> str:
    """Open a new issue in a GitHub repository to report a bug or request a feature."""
    return f"{repository}#1"


@tool
def book_restaurant(restaurant: str, people: int, time: str) -> str:
    """Reserve a table at a restaurant for a number of people at a given time."""
    return "booked"


@tool
def set_reminder(text: str, when: str) -> str:
    """Remind the user about something at a given time with a notification."""
    return "reminder set"


@tool
def get_stock_price(ticker: str) -> str:
    """Look up the latest share price of a company on the stock market by its ticker symbol."""
    return f"{ticker}: 100.0"


@tool
def play_music(song_or_artist: str) -> str:
    """Play a song, an album or an artist on the user's music speaker."""
    return "playing"


class ShipmentQuery(BaseModel):
    tracking_number: str = Field(description="The carrier's tracking number of the parcel.")


def _track_package(tracking_number: str) -> str:
    return "in transit"


# A StructuredTool built from an explicit argument schema, as opposed to the @tool functions above.
track_package = StructuredTool.from_function(
    func=_track_package,
    name="track_package",
    description="Track where a parcel or delivery is and when it will arrive.",
    args_schema=ShipmentQuery,
)


class ResizeImageTool(BaseTool):
    """A BaseTool subclass, the third way LangChain tools are written."""

    name: str = "resize_image"
    description: str = "Resize or crop a photo or picture to a given width and height in pixels."

    def _run(self, path: str, width: int, height: int) -> str:
        return f"{path} resized to {width}x{height}"


TOOLS: tuple[BaseTool, ...] = (
    get_weather_forecast,
    convert_currency,
    send_email,
    create_calendar_event,
    search_web,
    translate_text,
    run_sql_query,
    create_github_issue,
    book_restaurant,
    set_reminder,
    get_stock_price,
    play_music,
    track_package,
    ResizeImageTool(),
)


@pytest.fixture(scope="session")
def all_tools() -> tuple[BaseTool, ...]:
    """Fourteen realistic tools of all three kinds: @tool functions, a StructuredTool and a BaseTool subclass."""
    return TOOLS


@pytest.fixture
def tools(all_tools) -> list[BaseTool]:
    """A fresh list of the fourteen tools, which a test may reorder or extend."""
    return list(all_tools)
