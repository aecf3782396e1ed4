"""An agent loop over 57 LangChain tools that binds only the tools aegis-router selects for each turn.

Everything runs offline. The chat model is a scripted stand-in. Its script
names the tool each task needs, and it calls that tool only when the tool was
offered, so the output shows whether the selection gave the model what it
needed. The tools
return canned results. The selector runs the bundled demo model,
all-MiniLM-L6-v2 (English only).

LangChain's own fake chat models (GenericFakeChatModel, FakeListChatModel and
the others in langchain_core 1.8) do not implement bind_tools, so this file
defines a small one.

    python examples/langchain_agent.py [--k 5] [--model demo]

It needs the langchain-aegis package: pip install -e 'integrations/langchain-aegis[demo]'.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool, tool
from langchain_core.utils.function_calling import convert_to_openai_tool

from langchain_aegis import AegisToolSelector

# --- Tools -------------------------------------------------------------------
# Each returns a canned result: the example is about which tools are offered,
# not about what they do.


@tool
def get_weather_forecast(city: str, days: int = 3) -> str:
    """Get the weather forecast for a city: temperature, chance of rain and wind for the next days."""
    return f"{city}: 14 °C, 80% chance of rain tomorrow, light wind"


@tool
def get_air_quality(city: str) -> str:
    """Get the current air quality index and pollen levels for a city."""
    return f"{city}: air quality index 42 (good), pollen low"


@tool
def create_calendar_event(title: str, start: str, duration_minutes: int = 30, attendees: list[str] | None = None) -> str:
    """Create a meeting or appointment in the user's calendar at a given date and time, optionally inviting people."""
    return f"created '{title}' at {start} for {duration_minutes} minutes"


@tool
def list_calendar_events(day: str) -> str:
    """List the meetings and appointments in the user's calendar on a given day."""
    return f"{day}: 09:30 stand-up, 14:00 design review"


@tool
def cancel_calendar_event(title: str, day: str) -> str:
    """Cancel a meeting or appointment in the user's calendar."""
    return f"cancelled '{title}' on {day}"


@tool
def send_email(to: str, subject: str, body: str) -> str:
    """Send an email to a recipient with a subject line and a message body."""
    return f"email to {to} sent"


@tool
def search_inbox(query: str, limit: int = 10) -> str:
    """Search the user's email inbox for messages matching words, a sender or a date."""
    return f"3 messages match '{query}'"


@tool
def draft_email_reply(message_id: str, instructions: str) -> str:
    """Write a draft reply to an email message in the inbox, following the user's instructions."""
    return f"draft reply to {message_id} saved"


@tool
def send_sms(phone_number: str, text: str) -> str:
    """Send a text message (SMS) to a phone number."""
    return f"SMS to {phone_number} sent"


@tool
def post_slack_message(channel: str, text: str) -> str:
    """Post a message to a Slack channel of the user's workspace."""
    return f"posted to #{channel}"


@tool
def search_flights(origin: str, destination: str, date: str) -> str:
    """Search for airline flights between two cities on a date, with prices and times."""
    return f"{origin} -> {destination} on {date}: 3 flights from 129 EUR"


@tool
def book_hotel(city: str, check_in: str, nights: int, guests: int = 1) -> str:
    """Book a hotel room in a city for a number of nights."""
    return f"hotel in {city} booked for {nights} nights"


@tool
def get_train_times(origin: str, destination: str, date: str) -> str:
    """Look up train departure times and connections between two stations."""
    return f"{origin} -> {destination}: trains at 08:12, 09:12, 10:12"


@tool
def rent_car(city: str, pick_up: str, days: int) -> str:
    """Reserve a rental car in a city for a number of days."""
    return f"car reserved in {city} for {days} days"


@tool
def book_restaurant(restaurant: str, people: int, time: str) -> str:
    """Reserve a table at a restaurant for a number of people at a given time."""
    return f"table for {people} at {restaurant} at {time}"


@tool
def order_food_delivery(restaurant: str, items: list[str]) -> str:
    """Order food for home delivery from a restaurant."""
    return f"order from {restaurant} placed, arriving in 35 minutes"


@tool
def find_recipe(dish: str, diet: str = "") -> str:
    """Find a cooking recipe for a dish, with ingredients and steps."""
    return f"recipe for {dish}: 6 ingredients, 40 minutes"


@tool
def get_stock_price(ticker: str) -> str:
    """Get the latest share price of a company on the stock market by its ticker symbol."""
    return f"{ticker}: 187.42 USD, +1.3% today"


@tool
def convert_currency(amount: float, source: str, target: str) -> str:
    """Convert an amount of money from one currency to another at today's exchange rate."""
    return f"{amount} {source} = {amount * 0.92:.2f} {target}"


@tool
def check_bank_balance(account: str = "checking") -> str:
    """Check the balance of one of the user's bank accounts."""
    return f"{account}: 2,340.18 EUR"


@tool
def pay_invoice(invoice_number: str, amount: float) -> str:
    """Pay a supplier invoice from the company bank account."""
    return f"invoice {invoice_number} paid"


@tool
def calculate_loan_payment(principal: float, annual_rate_percent: float, years: int) -> str:
    """Calculate the monthly repayment of a loan or mortgage."""
    monthly_rate = annual_rate_percent / 100 / 12
    months = years * 12
    payment = principal * monthly_rate / (1 - (1 + monthly_rate) ** -months) if monthly_rate else principal / months
    return f"{payment:.2f} per month"


@tool
def track_package(tracking_number: str) -> str:
    """Track where a parcel or delivery is and when it will arrive."""
    return f"{tracking_number}: out for delivery, arriving today"


@tool
def search_products(query: str, max_price: float | None = None) -> str:
    """Search the online shop's catalogue for products to buy."""
    return f"12 products match '{query}'"


@tool
def add_to_cart(product_id: str, quantity: int = 1) -> str:
    """Add a product to the user's shopping cart."""
    return f"{quantity} x {product_id} added to the cart"


@tool
def request_refund(order_number: str, reason: str) -> str:
    """Ask for a refund or return of an order that arrived damaged or was not wanted."""
    return f"refund for {order_number} requested"


@tool
def create_github_issue(repository: str, title: str, body: str) -> str:
    """Open a new issue in a GitHub repository to report a bug or request a feature."""
    return f"{repository}#482 opened"


@tool
def review_pull_request(repository: str, number: int) -> str:
    """Review the code changes of a pull request and leave comments."""
    return f"{repository}#{number}: 2 comments left"


@tool
def run_sql_query(sql: str) -> str:
    """Run a read-only SQL query against the analytics database and return the rows."""
    return "1 row: 18,204"


@tool
def deploy_service(service: str, version: str, environment: str = "staging") -> str:
    """Deploy a version of a service to the staging or production environment."""
    return f"{service} {version} deployed to {environment}"


@tool
def read_service_logs(service: str, since: str = "1h", level: str = "error") -> str:
    """Read the recent log lines of a running service, filtered by level."""
    return f"{service}: 4 errors in the last {since}"


@tool
def restart_server(hostname: str) -> str:
    """Restart a server or virtual machine by its host name."""
    return f"{hostname} restarting"


@tool
def run_unit_tests(path: str = ".") -> str:
    """Run the project's unit tests and report failures."""
    return "212 passed, 1 failed"


@tool
def search_files(query: str, folder: str = "~") -> str:
    """Search the user's files and folders by name or content."""
    return f"5 files match '{query}'"


@tool
def convert_pdf_to_text(path: str) -> str:
    """Extract the text of a PDF document."""
    return f"{path}: 14 pages of text extracted"


@tool
def compress_files(paths: list[str], archive_name: str) -> str:
    """Pack files into a zip archive."""
    return f"{archive_name}.zip created"


@tool
def summarize_document(path: str, max_words: int = 150) -> str:
    """Summarize a long document or report in a few sentences."""
    return f"summary of {path} in {max_words} words"


@tool
def translate_text(text: str, target_language: str) -> str:
    """Translate a piece of text into another language, such as French or Japanese."""
    return f"[{target_language}] {text}"


@tool
def search_web(query: str) -> str:
    """Search the internet for pages about a topic and return the top results."""
    return f"10 results for '{query}'"


@tool
def define_word(word: str) -> str:
    """Look up the dictionary definition and pronunciation of an English word."""
    return f"{word}: (noun) ..."


@tool
def calculate_expression(expression: str) -> str:
    """Evaluate an arithmetic expression such as '17% of 2,340' or '(3 + 4) * 12'."""
    return f"{expression} = 397.8"


@tool
def play_music(song_or_artist: str) -> str:
    """Play a song, an album or an artist on the user's speakers."""
    return f"playing {song_or_artist}"


@tool
def resize_image(path: str, width: int, height: int) -> str:
    """Resize or crop a photo or picture to a given width and height in pixels."""
    return f"{path} resized to {width}x{height}"


@tool
def transcribe_audio(path: str, language: str = "en") -> str:
    """Transcribe the speech in an audio recording or voice memo into text."""
    return f"{path}: 3 minutes transcribed"


@tool
def set_thermostat(temperature_celsius: float, room: str = "living room") -> str:
    """Set the heating or cooling thermostat of a room to a temperature."""
    return f"{room} set to {temperature_celsius} °C"


@tool
def control_lights(room: str, on: bool, brightness_percent: int = 100) -> str:
    """Turn the lights in a room on or off, or dim them."""
    return f"{room} lights {'on' if on else 'off'}"


@tool
def lock_front_door(locked: bool = True) -> str:
    """Lock or unlock the front door of the house."""
    return "front door locked" if locked else "front door unlocked"


@tool
def set_reminder(text: str, when: str) -> str:
    """Remind the user about something at a given time with a phone notification."""
    return f"reminder '{text}' set for {when}"


@tool
def create_todo(task: str, due: str = "") -> str:
    """Add an item to the user's to-do list."""
    return f"to-do '{task}' added"


@tool
def log_workout(activity: str, minutes: int) -> str:
    """Record a workout or exercise session in the user's fitness log."""
    return f"{minutes} minutes of {activity} logged"


@tool
def find_doctor(specialty: str, city: str) -> str:
    """Find doctors or clinics of a medical specialty near the user and their free appointment slots."""
    return f"3 {specialty} practices in {city} with slots this week"


@tool
def get_directions(origin: str, destination: str, mode: str = "driving") -> str:
    """Get turn-by-turn directions and travel time between two places by car, bike, foot or transit."""
    return f"{origin} -> {destination}: 24 minutes by {mode}"


@tool
def find_nearby_places(category: str, near: str) -> str:
    """Find places of a kind (cafés, pharmacies, petrol stations) near a location."""
    return f"4 {category} near {near}"


@tool
def get_news_headlines(topic: str = "world") -> str:
    """Get today's top news headlines on a topic."""
    return f"5 headlines on {topic}"


@tool
def request_time_off(start: str, end: str, reason: str = "vacation") -> str:
    """Submit a vacation or leave request to the user's manager in the HR system."""
    return f"time off {start} to {end} requested"


@tool
def lookup_contact(name: str) -> str:
    """Look up a person's phone number, email address and company in the user's contacts."""
    return f"{name}: +47 900 00 000, {name.lower()}@example.com"


@tool
def create_spreadsheet(title: str, columns: list[str]) -> str:
    """Create a new spreadsheet with the given column headers."""
    return f"spreadsheet '{title}' created"


# Every @tool defined above, in the order of definition.
TOOLS: list[BaseTool] = [value for value in list(globals().values()) if isinstance(value, BaseTool)]

# --- The scripted chat model -------------------------------------------------


class ScriptedToolCallingModel(BaseChatModel):
    """A stand-in for a tool-calling chat model, driven by a script of task -> (tool, arguments).

    For a new task it calls the scripted tool when that tool is among the
    bound ones, and otherwise replies that it has no fitting tool. After a
    tool result it replies with that result.
    """

    script: dict[str, tuple[str, dict[str, Any]]]

    @property
    def _llm_type(self) -> str:
        return "scripted-tool-calling"

    def bind_tools(self, tools: Sequence[BaseTool], **kwargs: Any) -> Runnable[Any, AIMessage]:
        return self.bind(tools=[convert_to_openai_tool(item) for item in tools], **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        tools: Sequence[dict[str, Any]] = (),
        **kwargs: Any,
    ) -> ChatResult:
        last = messages[-1]
        if isinstance(last, ToolMessage):
            reply = AIMessage(content=f"Done: {last.content}.")
        else:
            task = str(last.content)
            needed, arguments = self.script[task]
            offered = {spec["function"]["name"] for spec in tools}
            if needed in offered:
                reply = AIMessage(content="", tool_calls=[{"name": needed, "args": arguments, "id": f"call_{needed}"}])
            else:
                reply = AIMessage(content=f"None of the {len(offered)} tools I was given can do this.")
        return ChatResult(generations=[ChatGeneration(message=reply)])


# --- The agent loop ----------------------------------------------------------

TURNS: list[tuple[str, str, dict[str, Any]]] = [
    ("Will I need an umbrella in Bergen tomorrow?", "get_weather_forecast", {"city": "Bergen", "days": 1}),
    ("Book a table for four at Trattoria Roma at 8 pm", "book_restaurant", {"restaurant": "Trattoria Roma", "people": 4, "time": "20:00"}),
    ("Where is my parcel 1Z999AA10123456784?", "track_package", {"tracking_number": "1Z999AA10123456784"}),
    ("Set up a meeting with Priya on Thursday at 10 to plan the release", "create_calendar_event", {"title": "Release planning", "start": "Thursday 10:00", "attendees": ["Priya"]}),
    ("How much is 300 US dollars in euros?", "convert_currency", {"amount": 300, "source": "USD", "target": "EUR"}),
    ("The checkout service is throwing errors, show me its logs from the last hour", "read_service_logs", {"service": "checkout", "since": "1h"}),
    ("Turn off the lights in the kitchen", "control_lights", {"room": "kitchen", "on": False}),
    ("Translate 'see you next week' into Japanese", "translate_text", {"text": "see you next week", "target_language": "Japanese"}),
    ("Find me a flight from Oslo to Lisbon on May 12", "search_flights", {"origin": "Oslo", "destination": "Lisbon", "date": "May 12"}),
    ("Remind me to water the plants at 6 pm", "set_reminder", {"text": "water the plants", "when": "18:00"}),
]


def run_turn(selector: AegisToolSelector, model: ScriptedToolCallingModel, number: int, task: str, needed: str) -> bool:
    """Run one turn (select tools, bind them, let the model call one, print its reply) and return whether the needed tool was offered."""
    details = selector.select_with_details(task)
    decision = details.selection
    bound = model.bind_tools(details.tools)

    print(f"turn {number}: {task}")
    offered = ", ".join(f"{candidate.tool.id} {candidate.score:.2f}" for candidate in decision.candidates)
    tier_phrase = "escalated to" if decision.escalated else "decided at"
    print(f"  offered {len(details.tools)} of {len(selector.tools)} tools ({tier_phrase} tier {decision.tier.key}, {decision.ms:.0f} ms): {offered}")

    messages: list[BaseMessage] = [HumanMessage(task)]
    reply = bound.invoke(messages)
    if reply.tool_calls:
        messages.append(reply)
        for call in reply.tool_calls:
            # Invoking a tool with a tool call returns a ToolMessage carrying the call's id.
            result = selector.tool_registry[call["name"]].invoke(call)
            print(f"  model called {call['name']}({json.dumps(call['args'])}) -> {result.content}")
            messages.append(result)
        reply = bound.invoke(messages)
    print(f"  reply: {reply.content}\n")
    return needed in details.names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=5, help="tools offered to the model per turn (default 5)")
    parser.add_argument("--model", default="demo", help="model folder or hub id (default: the bundled demo model)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    started = time.perf_counter()
    selector = AegisToolSelector(TOOLS, model=args.model, k=args.k)
    model = ScriptedToolCallingModel(script={task: (needed, arguments) for task, needed, arguments in TURNS})
    print(f"{len(TOOLS)} tools, {args.k} offered per turn, model {selector.encoder.name}\n")

    offered_needed = sum(run_turn(selector, model, number, task, needed) for number, (task, needed, _) in enumerate(TURNS, 1))
    print(f"the needed tool was offered in {offered_needed} of {len(TURNS)} turns")
    print(f"tool index built {selector.index_builds} time(s) for {len(TURNS)} turns\n")

    # A new tool changes the tool list, so the next selection embeds the tools again.
    @tool
    def book_taxi(pick_up: str, destination: str, time: str = "now") -> str:
        """Order a taxi from a pick-up address to a destination."""
        return f"taxi from {pick_up} to {destination} booked for {time}"

    selector.tools = [*TOOLS, book_taxi]
    model.script["Get me a taxi to the airport at 5 am"] = ("book_taxi", {"pick_up": "home", "destination": "airport", "time": "05:00"})
    run_turn(selector, model, len(TURNS) + 1, "Get me a taxi to the airport at 5 am", "book_taxi")
    print(f"tool index built {selector.index_builds} time(s) after adding book_taxi")
    print(f"total time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
