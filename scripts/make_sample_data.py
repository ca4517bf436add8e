"""Write the sample datasets that ship with tunesmith (our own generated text, CC0-1.0).

    python scripts/make_sample_data.py --out src/tunesmith/assets/samples

One small data set per task: instruction conversations, labelled product reviews and a
domain corpus (manuals for an invented household robot). Deterministic for a given seed.
The instruct tasks are ones the embedded base model has not seen in its pretraining text,
with short fixed-form answers, so held-out loss drops visibly within a few hundred steps.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------
# Instruction data
# ---------------------------------------------------------------------------------------------

OPPOSITES = {
    "hot": "cold",
    "big": "small",
    "up": "down",
    "fast": "slow",
    "happy": "sad",
    "light": "dark",
    "open": "closed",
    "full": "empty",
    "old": "young",
    "wet": "dry",
    "early": "late",
    "loud": "quiet",
    "hard": "soft",
    "high": "low",
    "long": "short",
    "rich": "poor",
    "clean": "dirty",
    "strong": "weak",
    "thick": "thin",
    "heavy": "light",
    "near": "far",
    "day": "night",
    "left": "right",
    "win": "lose",
    "push": "pull",
    "begin": "end",
    "inside": "outside",
    "above": "below",
    "sweet": "sour",
    "first": "last",
    "true": "false",
    "awake": "asleep",
    "cheap": "expensive",
    "tall": "short",
    "brave": "afraid",
    "easy": "difficult",
    "warm": "cool",
    "wide": "narrow",
    "come": "go",
    "before": "after",
    "question": "answer",
    "friend": "enemy",
    "laugh": "cry",
    "buy": "sell",
}
PLURALS = {
    "cat": "cats",
    "dog": "dogs",
    "book": "books",
    "tree": "trees",
    "house": "houses",
    "car": "cars",
    "apple": "apples",
    "chair": "chairs",
    "bird": "birds",
    "river": "rivers",
    "box": "boxes",
    "bus": "buses",
    "fox": "foxes",
    "dish": "dishes",
    "brush": "brushes",
    "church": "churches",
    "watch": "watches",
    "glass": "glasses",
    "city": "cities",
    "baby": "babies",
    "lady": "ladies",
    "story": "stories",
    "party": "parties",
    "berry": "berries",
    "leaf": "leaves",
    "knife": "knives",
    "wolf": "wolves",
    "shelf": "shelves",
    "loaf": "loaves",
    "mouse": "mice",
    "child": "children",
    "man": "men",
    "woman": "women",
    "foot": "feet",
    "tooth": "teeth",
    "goose": "geese",
    "person": "people",
    "sheep": "sheep",
    "fish": "fish",
    "deer": "deer",
    "potato": "potatoes",
    "tomato": "tomatoes",
    "hero": "heroes",
    "toy": "toys",
    "day": "days",
    "key": "keys",
    "boy": "boys",
    "ox": "oxen",
}
FRUIT_COLOURS = {
    "banana": "yellow",
    "lemon": "yellow",
    "strawberry": "red",
    "cherry": "red",
    "tomato": "red",
    "lime": "green",
    "cucumber": "green",
    "pea": "green",
    "carrot": "orange",
    "orange": "orange",
    "pumpkin": "orange",
    "plum": "purple",
    "aubergine": "purple",
    "blueberry": "blue",
    "raspberry": "red",
    "kiwi": "brown on the outside and green inside",
    "coconut": "brown",
    "grape": "green or purple",
    "pear": "green",
    "apricot": "orange",
    "radish": "red",
}
ANIMAL_SOUNDS = {
    "cow": "moo",
    "dog": "woof",
    "cat": "meow",
    "duck": "quack",
    "sheep": "baa",
    "pig": "oink",
    "horse": "neigh",
    "owl": "hoot",
    "lion": "roar",
    "frog": "ribbit",
    "donkey": "hee-haw",
    "snake": "hiss",
    "bee": "buzz",
    "mouse": "squeak",
    "rooster": "cock-a-doodle-doo",
    "goose": "honk",
    "crow": "caw",
    "wolf": "howl",
}
# Invented countries, so the base model cannot know the answers before finetuning.
CAPITALS = {
    "Valdoria": "Mirebridge",
    "Zentaria": "Oskel",
    "Brumland": "Fennick",
    "Quillonia": "Tarsa",
    "Ostravel": "Lumen Bay",
    "Karthmoor": "Vell",
    "Lindaro": "Ceskar",
    "Paxmere": "Dunhollow",
    "Sorrelia": "Ambrin",
    "Trevania": "Kolt",
    "Ulmsted": "Rivenport",
    "Yarrowmark": "Bexley Cross",
    "Elsmire": "Nordvik",
    "Halvaria": "Pellan",
    "Grenmoor": "Istra",
}
BACKWARD_WORDS = [
    "cat",
    "dog",
    "sun",
    "hat",
    "cup",
    "pen",
    "map",
    "box",
    "bird",
    "fish",
    "tree",
    "book",
    "door",
    "milk",
    "lamp",
    "ship",
    "star",
    "frog",
    "rain",
    "snow",
    "wind",
    "cake",
    "ring",
    "king",
    "bell",
    "coat",
    "road",
    "moon",
    "leaf",
    "seed",
    "nest",
    "home",
    "ball",
    "kite",
    "rose",
    "gold",
    "wolf",
    "bear",
    "lion",
    "apple",
    "table",
    "water",
    "house",
    "green",
    "river",
    "stone",
    "cloud",
    "bread",
    "horse",
    "mouse",
    "chair",
    "light",
    "smile",
]
SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a helpful assistant. Answer in one short sentence.",
    "You are a patient tutor for young children.",
]


def opposite_items() -> list[tuple[str, str]]:
    items = []
    for word, opposite in OPPOSITES.items():
        answer = f"The opposite of {word} is {opposite}."
        items.append((f"What is the opposite of {word}?", answer))
        items.append((f"Tell me the opposite of the word '{word}'.", answer))
    return items


def plural_items() -> list[tuple[str, str]]:
    items = []
    for word, plural in PLURALS.items():
        answer = f"The plural of {word} is {plural}."
        items.append((f"What is the plural of {word}?", answer))
        items.append((f"What is the plural form of '{word}'?", answer))
    return items


def addition_items() -> list[tuple[str, str]]:
    items = []
    for first in range(0, 13):
        for second in range(0, 13):
            answer = f"{first} plus {second} is {first + second}."
            items.append((f"Add {first} and {second}.", answer))
            items.append((f"What is {first} plus {second}?", answer))
    return items


def colour_items() -> list[tuple[str, str]]:
    items = []
    for fruit, colour in FRUIT_COLOURS.items():
        name = ("an " if fruit[0] in "aeiou" else "a ") + fruit
        answer = f"{name[0].upper()}{name[1:]} is {colour}."
        items.append((f"What colour is {name}?", answer))
        items.append((f"Which colour is {name}?", answer))
    return items


def backwards_items() -> list[tuple[str, str]]:
    items = []
    for word in BACKWARD_WORDS:
        answer = f"{word} backwards is {word[::-1]}."
        items.append((f"Spell {word} backwards.", answer))
        items.append((f"Write the word '{word}' backwards.", answer))
    return items


def animal_sound_items() -> list[tuple[str, str]]:
    items = []
    for animal, sound in ANIMAL_SOUNDS.items():
        answer = f"A {animal} says {sound}."
        items.append((f"Which animal says {sound}?", answer))
        items.append((f"What does a {animal} say?", answer))
    return items


def capital_items() -> list[tuple[str, str]]:
    items = []
    for country, capital in CAPITALS.items():
        answer = f"The capital of {country} is {capital}."
        items.append((f"What is the capital of {country}?", answer))
        items.append((f"Which city is the capital of {country}?", answer))
        items.append((f"Name the capital city of {country}.", answer))
    return items


# (task, generator, train examples, eval examples)
INSTRUCT_TASKS = [
    ("opposite", opposite_items, 75, 9),
    ("plural", plural_items, 70, 9),
    ("addition", addition_items, 85, 12),
    ("colour", colour_items, 35, 6),
    ("backwards", backwards_items, 75, 11),
    ("animal_sound", animal_sound_items, 30, 6),
]
NUM_CAPITALS_EVAL = 7
NUM_MULTI_TURN_TRAIN = 50
SYSTEM_MESSAGE_PROBABILITY = 0.15


def split_task(rng: random.Random, items: list[tuple[str, str]], num_train: int, num_eval: int):
    items = list(dict.fromkeys(items))
    rng.shuffle(items)
    return items[:num_train], items[num_train : num_train + num_eval]


def as_conversation(rng: random.Random, exchanges: list[tuple[str, str]]) -> dict:
    messages = []
    if rng.random() < SYSTEM_MESSAGE_PROBABILITY:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    for question, answer in exchanges:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def split_capitals(rng: random.Random, num_eval: int):
    # Capitals are facts to memorise, not a rule to generalise: every country stays in train,
    # and eval asks about some of them in a phrasing that train does not use for that country.
    items = capital_items()
    countries = list(CAPITALS)
    held_out_countries = set(rng.sample(countries, num_eval))
    train_pairs, eval_pairs = [], []
    for country in countries:
        phrasings = [item for item in items if f" {country}" in item[0]]
        if country in held_out_countries:
            eval_pairs.append(phrasings.pop(rng.randrange(len(phrasings))))
        train_pairs += phrasings
    return train_pairs, eval_pairs


def make_instruct(rng: random.Random) -> tuple[list[dict], list[dict]]:
    train_pairs, eval_pairs = split_capitals(rng, NUM_CAPITALS_EVAL)
    for _name, generator, num_train, num_eval in INSTRUCT_TASKS:
        train_part, eval_part = split_task(rng, generator(), num_train, num_eval)
        train_pairs += train_part
        eval_pairs += eval_part
    train = [as_conversation(rng, [pair]) for pair in train_pairs]
    # Multi-turn conversations reuse train questions, so they teach the turn structure and no
    # held-out answer leaks into train.
    for _ in range(NUM_MULTI_TURN_TRAIN):
        train.append(as_conversation(rng, rng.sample(train_pairs, 2)))
    evaluation = [as_conversation(rng, [pair]) for pair in eval_pairs]
    rng.shuffle(train)
    rng.shuffle(evaluation)
    train_questions = {pair[0] for pair in train_pairs}
    assert not any(pair[0] in train_questions for pair in eval_pairs)
    return train, evaluation


# ---------------------------------------------------------------------------------------------
# Classification data: short product reviews with clear sentiment words
# ---------------------------------------------------------------------------------------------

PRODUCTS = [
    "kettle",
    "toaster",
    "desk lamp",
    "backpack",
    "water bottle",
    "phone case",
    "rain jacket",
    "pair of headphones",
    "coffee grinder",
    "frying pan",
    "umbrella",
    "yoga mat",
    "alarm clock",
    "bicycle pump",
    "garden hose",
    "wool scarf",
    "pair of walking boots",
    "office chair",
    "cookbook",
    "board game",
    "kitchen scale",
    "electric toothbrush",
    "travel mug",
    "tent",
    "hair dryer",
    "blender",
    "bookshelf",
    "set of pencils",
    "wall clock",
    "pillow",
    "laptop stand",
    "lunch box",
    "torch",
    "doormat",
    "shower head",
    "pair of gloves",
    "picture frame",
    "teapot",
]
POSITIVE_OPENINGS = [
    "I love this {product}.",
    "This {product} is excellent.",
    "Great {product}!",
    "What a fantastic {product}.",
    "Really happy with this {product}.",
    "This is the best {product} I have ever bought.",
    "Brilliant {product}.",
    "The {product} is wonderful.",
]
POSITIVE_DETAILS = [
    "It works perfectly.",
    "The quality is superb.",
    "It arrived quickly and looks beautiful.",
    "Worth every penny.",
    "It is sturdy and well made.",
    "Easy to use and very reliable.",
    "My whole family loves it.",
    "I would happily buy it again.",
    "It exceeded my expectations.",
    "Five stars from me.",
    "Highly recommended.",
    "It feels solid and works like a charm.",
]
NEGATIVE_OPENINGS = [
    "I hate this {product}.",
    "This {product} is terrible.",
    "Awful {product}.",
    "What a disappointing {product}.",
    "Really unhappy with this {product}.",
    "This is the worst {product} I have ever bought.",
    "Do not buy this {product}.",
    "The {product} is useless.",
]
NEGATIVE_DETAILS = [
    "It broke after two days.",
    "The quality is poor.",
    "It arrived damaged and scratched.",
    "A complete waste of money.",
    "It feels cheap and flimsy.",
    "It stopped working within a week.",
    "I am returning it.",
    "Customer service never replied.",
    "It is much smaller than the photos show.",
    "One star, and that is generous.",
    "Avoid it.",
    "It leaks and makes a horrible noise.",
]
NEUTRAL_OPENINGS = [
    "The {product} is okay.",
    "This {product} is fine.",
    "An average {product}.",
    "It is a normal {product}.",
    "The {product} does the job.",
    "Nothing special about this {product}.",
    "This {product} is as described.",
    "A basic {product}.",
]
NEUTRAL_DETAILS = [
    "It arrived on time.",
    "It is neither good nor bad.",
    "It does what it says.",
    "The colour is as shown in the picture.",
    "About what I expected for the price.",
    "It came in a plain box.",
    "I have used it a few times so far.",
    "It is the usual size.",
    "No complaints, but no praise either.",
    "Three stars.",
    "It works as expected.",
    "I have not decided if I like it yet.",
]
SENTIMENT_TEMPLATES = {
    "positive": (POSITIVE_OPENINGS, POSITIVE_DETAILS),
    "negative": (NEGATIVE_OPENINGS, NEGATIVE_DETAILS),
    "neutral": (NEUTRAL_OPENINGS, NEUTRAL_DETAILS),
}
LABEL_WEIGHTS = {"positive": 0.45, "negative": 0.33, "neutral": 0.22}  # slightly imbalanced on purpose


def make_review(rng: random.Random, label: str) -> str:
    openings, details = SENTIMENT_TEMPLATES[label]
    product = rng.choice(PRODUCTS)
    sentences = [rng.choice(openings).format(product=product)]
    sentences += rng.sample(details, rng.randint(1, 2))
    return " ".join(sentences)


def make_classify(rng: random.Random, num_train: int, num_eval: int) -> tuple[list[dict], list[dict]]:
    rows, seen = [], set()
    while len(rows) < num_train + num_eval:
        label = rng.choices(list(LABEL_WEIGHTS), weights=list(LABEL_WEIGHTS.values()))[0]
        text = make_review(rng, label)
        if text in seen:
            continue
        seen.add(text)
        rows.append({"text": text, "label": label})
    return rows[:num_train], rows[num_train:]


# ---------------------------------------------------------------------------------------------
# Domain corpus: documentation for an invented household robot
# ---------------------------------------------------------------------------------------------

ROBOT = "Hearthmate HM-7"
MODELS = {
    "HM-7": {"battery_wh": 96, "mass_kg": 11.4, "height_mm": 1180, "payload_kg": 2.5, "runtime_min": 140},
    "HM-7 Plus": {
        "battery_wh": 128,
        "mass_kg": 12.1,
        "height_mm": 1180,
        "payload_kg": 3.0,
        "runtime_min": 185,
    },
    "HM-7 Compact": {
        "battery_wh": 72,
        "mass_kg": 8.9,
        "height_mm": 940,
        "payload_kg": 1.5,
        "runtime_min": 110,
    },
    "HM-9 Pro": {
        "battery_wh": 160,
        "mass_kg": 14.6,
        "height_mm": 1260,
        "payload_kg": 4.0,
        "runtime_min": 230,
    },
}
COMPONENTS = {
    "left drive wheel": "DRV-L",
    "right drive wheel": "DRV-R",
    "caster wheel": "CST",
    "lidar turret": "LDR",
    "front bumper": "BMP",
    "cliff sensor array": "CLF",
    "gripper arm": "GRP",
    "wrist actuator": "WRS",
    "dust bin": "BIN",
    "HEPA filter": "FLT",
    "main brush roll": "BRS",
    "side brush": "SBR",
    "mop pad carrier": "MOP",
    "water tank": "TNK",
    "battery pack": "BAT",
    "charging contacts": "CHG",
    "docking beacon": "DOK",
    "camera module": "CAM",
    "microphone array": "MIC",
    "status ring": "LED",
    "cooling fan": "FAN",
    "motor controller board": "MCB",
    "Wi-Fi module": "NET",
    "tray lift": "TRY",
}
FAULTS = [
    (
        "not detected",
        "the connector is loose or the part is missing",
        "Reseat the connector and make sure the part clicks into place.",
    ),
    (
        "overcurrent",
        "the motor is blocked by hair, string or a small object",
        "Remove the blockage and check that the part turns freely by hand.",
    ),
    (
        "overtemperature",
        "the part has been running under load for too long",
        "Let the robot cool down for 20 minutes in a ventilated room.",
    ),
    (
        "calibration lost",
        "the stored calibration values are out of range",
        "Run the calibration routine from Settings > Service > Calibrate.",
    ),
    (
        "signal timeout",
        "the part stopped answering the motor controller",
        "Restart the robot. If the code returns, update the firmware.",
    ),
    (
        "voltage out of range",
        "the supply voltage is below 10.8 V or above 16.8 V",
        "Check the battery pack and the charging contacts for dirt or damage.",
    ),
    ("obstructed", "the part is covered by dust or an object", "Wipe the part with a dry microfibre cloth."),
    (
        "jammed",
        "the mechanism cannot reach its end position",
        "Power off the robot and move the mechanism gently by hand to its rest position.",
    ),
    (
        "worn",
        "the part has reached the end of its service life",
        "Replace the part. Order it by its part number from an authorised dealer.",
    ),
]
SEVERITIES = ["info", "warning", "error", "critical"]
SERVICE_INTERVALS = {
    "dust bin": "after every cleaning run",
    "HEPA filter": "every 2 weeks; replace every 3 months",
    "main brush roll": "every week; replace every 6 months",
    "side brush": "replace every 4 months",
    "mop pad carrier": "wash the pads after every mopping run",
    "water tank": "rinse every day it is used",
    "cliff sensor array": "wipe every 2 weeks",
    "lidar turret": "wipe the window every month",
    "charging contacts": "clean every month",
    "caster wheel": "remove hair every 2 weeks",
    "gripper arm": "inspect the finger pads every 3 months",
    "cooling fan": "vacuum the intake every 2 months",
    "camera module": "wipe the lens every month",
    "battery pack": "replace after 800 charge cycles",
}
TOOLS = [
    "a Phillips PH1 screwdriver",
    "the cleaning tool stored under the dust bin",
    "a dry microfibre cloth",
    "a cotton swab",
    "isopropyl alcohol (70 percent)",
    "a pair of tweezers",
    "a soft brush",
    "the hex key supplied in the box",
    "mild soapy water",
]
MODES = {
    "Quick Sweep": "cleans open floor only, skips edges, about 25 minutes for 60 square metres",
    "Deep Clean": "two passes in a crossed pattern with suction at level 4",
    "Edge Focus": "follows walls and furniture legs with the side brush at full speed",
    "Mop Only": "lifts the brush roll and mops with water flow level 2",
    "Quiet Night": "suction level 1 and drive speed 0.2 m/s, below 52 dB",
    "Fetch": "carries an object on the tray from one saved room to another",
    "Patrol": "drives a saved route and sends camera snapshots to the app",
    "Tidy Up": "picks up small items with the gripper arm and drops them into the toy bin",
}


def error_code_document(rng: random.Random) -> str:
    lines = [
        f"# {ROBOT} error code reference",
        "",
        "Error codes appear on the status ring display and in the app under Diagnostics > Log.",
        "Each code has the form `E-<group>-<number>`. Codes marked critical stop all motors.",
        "",
    ]
    number = 100
    for component, group in COMPONENTS.items():
        lines.append(f"## {group}: {component}")
        lines.append("")
        for fault, cause, fix in rng.sample(FAULTS, rng.randint(5, 9)):
            number += rng.randint(1, 9)
            severity = rng.choice(SEVERITIES)
            lines += [
                f"### E-{group}-{number}: {component} {fault}",
                "",
                f"- Severity: {severity}",
                f"- Cause: {cause}.",
                f"- Fix: {fix}",
                f"- If the code appears more than {rng.choice([2, 3, 5])} times in {rng.choice([24, 48, 72])} hours, "
                f"contact service and quote the code and the robot serial number (label under the dust bin).",
                "",
            ]
    return "\n".join(lines)


def maintenance_document(rng: random.Random) -> str:
    lines = [
        f"{ROBOT} MAINTENANCE GUIDE",
        "=" * 30,
        "",
        "Always power off the robot before maintenance: hold the POWER key for 5 seconds until the",
        "status ring turns off. Never immerse the robot in water.",
        "",
    ]
    for component, interval in SERVICE_INTERVALS.items():
        code = COMPONENTS[component]
        lines += [
            f"{component.upper()} (part group {code})",
            f"Interval: {interval}.",
            "Tools: " + ", ".join(rng.sample(TOOLS, rng.randint(1, 3))) + ".",
            "Procedure:",
        ]
        steps = [
            "Power off the robot and place it upside down on a soft towel.",
            f"Press the release tab marked {code} and lift out the {component}.",
            rng.choice(
                [
                    f"Remove hair and dust from the {component} with the cleaning tool.",
                    f"Wipe the {component} with a dry microfibre cloth.",
                    f"Rinse the {component} under running water and let it dry for 24 hours.",
                ]
            ),
            rng.choice(
                [
                    "Check for cracks, worn edges or missing screws.",
                    "Check that the part turns freely and makes no grinding noise.",
                    "Inspect the seal; replace it if it is flattened or torn.",
                ]
            ),
            f"Refit the {component} until it clicks, then power on the robot.",
            f"Open the app and reset the counter under Maintenance > {component[0].upper() + component[1:]}.",
        ]
        lines += [f"  {index}. {step}" for index, step in enumerate(steps, 1)]
        lines += [
            "",
            f"Note: a {component} that is not refitted correctly causes error E-{code}-"
            f"{rng.randint(100, 400)} at the next start.",
            "",
        ]
    for week in range(1, 13):
        tasks = rng.sample(list(SERVICE_INTERVALS), 3)
        lines.append(f"Week {week} checklist: " + "; ".join(tasks) + ".")
    return "\n".join(lines) + "\n"


def specifications_document() -> str:
    lines = [
        f"# {ROBOT} family: technical specifications",
        "",
        "| model | battery (Wh) | mass (kg) | height (mm) | tray payload (kg) | runtime (min) |",
        "|---|---|---|---|---|---|",
    ]
    for name, spec in MODELS.items():
        lines.append(
            f"| {name} | {spec['battery_wh']} | {spec['mass_kg']} | {spec['height_mm']} | "
            f"{spec['payload_kg']} | {spec['runtime_min']} |"
        )
    lines += [""]
    for name, spec in MODELS.items():
        charge_hours = round(spec["battery_wh"] / 40, 1)
        lines += [
            f"## {name}",
            "",
            f"- Battery: lithium-ion, 14.4 V nominal, {spec['battery_wh']} Wh, full charge in about {charge_hours} h on the 40 W dock.",
            f"- Runtime: up to {spec['runtime_min']} minutes in Quick Sweep, about {int(spec['runtime_min'] * 0.6)} minutes in Deep Clean.",
            f"- Mass: {spec['mass_kg']} kg without water; height {spec['height_mm']} mm with the tray lowered.",
            f"- Tray payload: {spec['payload_kg']} kg, evenly spread; the tray lift raises it by 320 mm.",
            "- Navigation: 360-degree lidar (range 0.15 to 8 m), 6 cliff sensors, front bumper with 2 switches.",
            "- Connectivity: Wi-Fi 2.4 GHz 802.11 b/g/n, Bluetooth LE for setup.",
            "- Operating conditions: 5 to 35 degrees C, 20 to 80 percent relative humidity, indoor use only.",
            "",
        ]
        for mode, description in MODES.items():
            lines.append(f"- Mode {mode}: {description}.")
        lines.append("")
    return "\n".join(lines)


def user_manual_document(rng: random.Random) -> str:
    lines = [f"# {ROBOT} user manual", "", "## 1. Safety", ""]
    safety = [
        "Keep cables, curtains and small objects off the floor before a cleaning run.",
        "Do not let children ride on the robot or the tray.",
        "Use only the supplied dock and power adapter (input 100-240 V AC, output 19 V DC, 2.1 A).",
        "Do not use the robot on stairs without the virtual wall set in the app.",
        "Keep the lidar window and cliff sensors clean; dirty sensors can cause falls.",
        "Do not place hot drinks or open liquids on the tray.",
    ]
    lines += [f"- {line}" for line in safety] + ["", "## 2. Setup", ""]
    setup = [
        "Place the dock against a wall with 0.5 m free on each side and 1.5 m free in front.",
        "Plug in the dock; the docking beacon light turns white.",
        "Remove the protective foam from the bumper and the gripper arm.",
        "Place the robot on the dock; the status ring pulses blue while it charges.",
        "Install the app and hold the HOME and SPOT keys together for 3 seconds to enter pairing.",
        "Follow the app to connect the robot to your 2.4 GHz Wi-Fi network.",
        "Let the robot map your home with a Quick Sweep before you use other modes.",
    ]
    lines += [f"{index}. {step}" for index, step in enumerate(setup, 1)] + ["", "## 3. Cleaning modes", ""]
    for mode, description in MODES.items():
        lines += [
            f"### {mode}",
            "",
            f"{mode} {description}. "
            f"Start it from the app or press SPOT {rng.randint(1, 4)} times until the status ring "
            f"shows {rng.choice(['green', 'amber', 'cyan', 'violet'])}.",
            "",
        ]
    lines += ["## 4. Status ring", ""]
    for colour, meaning in [
        ("pulsing blue", "charging"),
        ("solid blue", "fully charged"),
        ("white", "cleaning"),
        ("amber", "low battery, returning to dock"),
        ("red", "error; see the code in the app"),
        ("violet", "pairing mode"),
        ("flashing green", "firmware update in progress; do not power off"),
    ]:
        lines.append(f"- {colour}: {meaning}.")
    lines += ["", "## 5. Troubleshooting questions", ""]
    questions = []
    for component, code in COMPONENTS.items():
        fault, cause, fix = rng.choice(FAULTS)
        questions.append(
            f"**The app reports that the {component} is {fault}. What should I do?**\n\n"
            f"This usually means {cause}. {fix} The related codes start with E-{code}."
        )
    for _ in range(140):
        mode = rng.choice(list(MODES))
        room = rng.choice(["kitchen", "hallway", "living room", "bedroom", "bathroom", "office"])
        minutes = rng.randint(10, 90)
        questions.append(
            f"**Can I run {mode} in the {room} every day at {rng.randint(6, 22):02d}:{rng.choice(['00', '15', '30', '45'])}?**\n\n"
            f"Yes. Open Schedule, add a task, choose {mode} and the {room}, and set the time. A {room} of "
            f"{rng.randint(8, 40)} square metres takes about {minutes} minutes; keep at least "
            f"{rng.randint(20, 60)} percent battery for the trip back to the dock."
        )
    rng.shuffle(questions)
    lines += [question + "\n" for question in questions]
    return "\n".join(lines)


def firmware_notes_document(rng: random.Random) -> str:
    lines = [f"{ROBOT} firmware release notes", ""]
    major, minor, patch = 3, 0, 0
    for _ in range(110):
        patch += 1
        if rng.random() < 0.2:
            minor, patch = minor + 1, 0
        lines.append(
            f"Version {major}.{minor}.{patch} ({2023 + minor // 4}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d})"
        )
        for _ in range(rng.randint(2, 5)):
            component, code = rng.choice(list(COMPONENTS.items()))
            fault, _cause, _fix = rng.choice(FAULTS)
            lines.append(
                "  - "
                + rng.choice(
                    [
                        f"Fixed a false E-{code}-{rng.randint(100, 400)} ({component} {fault}) after waking from standby.",
                        f"Improved {component} control: {rng.randint(5, 30)} percent lower current at start.",
                        f"Mode {rng.choice(list(MODES))} now slows to 0.{rng.randint(1, 3)} m/s near the {component}.",
                        f"Added a self-test for the {component}; run it under Settings > Service > Self-test.",
                        f"Reduced dock search time by {rng.randint(3, 20)} seconds when the docking beacon is partly hidden.",
                    ]
                )
            )
        lines.append("")
    return "\n".join(lines)


def make_domain(rng: random.Random) -> dict[str, str]:
    return {
        "hm7_user_manual.md": user_manual_document(rng),
        "hm7_error_codes.md": error_code_document(rng),
        "hm7_maintenance.txt": maintenance_document(rng),
        "hm7_specifications.md": specifications_document(),
        "hm7_firmware_notes.txt": firmware_notes_document(rng),
    }


SAMPLES_README = """# Sample data sets

Small data sets for trying every tunesmith task offline with the embedded base model. All of
it is our own generated text, written by `scripts/make_sample_data.py` from templates and
word lists with a fixed seed, and released under **CC0-1.0** (public domain dedication).

Rebuild (deterministic):

```
{command}
```

| file | task | what it is |
|---|---|---|
| `instruct.jsonl` | instruct | {num_instruct} conversations in the OpenAI `messages` format (`{{"messages": [{{"role": ..., "content": ...}}]}}`); about 10% have two user turns and some start with a system message. Tasks: opposites, plurals, small sums, colours of fruit and vegetables, spelling words backwards, animal sounds, capitals of invented countries. Short fixed-form answers, so held-out loss drops within a few hundred steps. |
| `instruct_eval.jsonl` | instruct | {num_instruct_eval} held-out conversations; none of their questions is in `instruct.jsonl` (capital questions use a phrasing of a fact that train states in another phrasing). |
| `classify.jsonl` | classify | {num_classify} short product reviews, `{{"text": ..., "label": "positive" / "negative" / "neutral"}}`, slightly imbalanced ({label_counts}). |
| `classify_eval.jsonl` | classify | {num_classify_eval} held-out reviews, no text shared with train. |
| `domain/` | pretrain | {num_domain_files} documents ({domain_bytes:,} bytes) of product documentation for the invented "{robot}" household robot: user manual, error codes, maintenance guide, specifications and firmware notes. A register the base model has not seen, so its perplexity starts high and drops with continued pretraining. |
"""


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "src/tunesmith/assets/samples")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    instruct, instruct_eval = make_instruct(rng)
    write_jsonl(args.out / "instruct.jsonl", instruct)
    write_jsonl(args.out / "instruct_eval.jsonl", instruct_eval)

    classify, classify_eval = make_classify(rng, num_train=600, num_eval=120)
    write_jsonl(args.out / "classify.jsonl", classify)
    write_jsonl(args.out / "classify_eval.jsonl", classify_eval)

    domain_dir = args.out / "domain"
    domain_dir.mkdir(exist_ok=True)
    domain = make_domain(rng)
    for name, text in domain.items():
        (domain_dir / name).write_text(text)

    label_counts = {label: sum(row["label"] == label for row in classify) for label in LABEL_WEIGHTS}
    (args.out / "README.md").write_text(
        SAMPLES_README.format(
            command="python scripts/make_sample_data.py --out src/tunesmith/assets/samples",
            num_instruct=len(instruct),
            num_instruct_eval=len(instruct_eval),
            num_classify=len(classify),
            num_classify_eval=len(classify_eval),
            label_counts=", ".join(f"{label} {count}" for label, count in label_counts.items()),
            num_domain_files=len(domain),
            domain_bytes=sum(len(text.encode()) for text in domain.values()),
            robot=ROBOT,
        )
    )
    print(
        f"instruct {len(instruct)} / eval {len(instruct_eval)}; classify {len(classify)} / eval "
        f"{len(classify_eval)} {label_counts}; domain {[(n, len(t)) for n, t in domain.items()]}"
    )


if __name__ == "__main__":
    main()
