"""Build the embedded base model that ships inside tunesmith.

Everything here is made from scratch so the assets are licence-clean by construction:
a procedural English corpus (our own text, CC0-1.0), a byte-level BPE tokenizer trained
on it, and a small Llama pretrained on it for about ten minutes on two CPU cores.

    python scripts/build_base_model.py --out src/tunesmith/assets/base-model

The run is deterministic for a given seed, machine and torch build (same corpus, same
tokenizer, same initial weights, same batch order).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import shlex
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HELDOUT_PATH = REPO_ROOT / "src/tunesmith/assets/general_heldout.txt"

END_OF_TEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [END_OF_TEXT, IM_START, IM_END]  # ids 0, 1, 2 in this order

# ChatML. transformers renders templates with trim_blocks=True, which drops a newline written
# straight after a block tag, so the newline after {% endif %} is emitted as an expression.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] }}<|im_end|>"
    "{% endgeneration %}{% else %}{{ message['content'] }}<|im_end|>{% endif %}{{ '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

VOCAB_SIZE = 3072
CONTEXT_LENGTH = 512
BLOCK_LENGTH = 256
MAX_SAFETENSORS_BYTES = 9_000_000

# ---------------------------------------------------------------------------------------------
# Word lists. Small on purpose: the variety comes from combining them, not from their length.
# ---------------------------------------------------------------------------------------------

FEMALE_NAMES = (  # noqa: SIM905 (a word list reads better as one string)
    "Anna Mia Lucy Clara Emma Rosa Nora Lily Ella Maya Zoe Ruth Iris Hannah Sara Julia Alice Grace "
    "Amy Kate Lena Nina Eva Jane Molly Tess Ada June Ivy Pia Olive Hazel Wren Stella Martha Elsie"
).split()
MALE_NAMES = (  # noqa: SIM905 (a word list reads better as one string)
    "Tom Ben Sam Leo Max Jack Noah Finn Oscar Hugo Adam Owen Luke Paul Omar Ravi Theo Eli Dan Ivan "
    "Milo Jonah Felix Carl Peter Will Rory Ned Kai Rafael Arthur Simon Walter Henry Abel Louis"
).split()
RELATIVES = (  # noqa: SIM905 (a word list reads better as one string)
    "sister brother mother father grandmother grandfather aunt uncle cousin friend neighbour teacher"
).split()
ANIMALS = (  # noqa: SIM905 (a word list reads better as one string)
    "cat dog rabbit fox owl duck horse goat mouse bird frog bear deer sheep pig hen turtle squirrel "
    "hedgehog crow badger donkey lamb puppy kitten goose swan otter beaver pony"
).split()
PLACES = [
    "the park",
    "the market",
    "the beach",
    "the forest",
    "the river",
    "the library",
    "the school",
    "the garden",
    "the farm",
    "the bakery",
    "the station",
    "the harbour",
    "the hill",
    "the lake",
    "the village square",
    "the old mill",
    "the museum",
    "the zoo",
    "the meadow",
    "the orchard",
    "the playground",
    "the corner shop",
    "the castle",
    "the cave",
    "the field",
    "the pond",
    "the island",
    "the bridge",
    "the lighthouse",
    "the post office",
    "the valley",
    "the woods",
]
ROOMS = "kitchen bedroom attic cellar hall classroom workshop barn shed library bathroom porch".split()  # noqa: SIM905 (a word list reads better as one string)
OBJECTS = (  # noqa: SIM905 (a word list reads better as one string)
    "ball kite box key lamp hat book map basket boat bell cup drum coat umbrella letter shell stone "
    "ribbon bicycle blanket candle feather jar ladder mirror rope scarf spoon wagon clock compass "
    "bucket flag whistle puzzle paintbrush sandwich teapot button marble glove sock pencil notebook "
    "backpack lantern shovel net bottle bowl pillow"
).split()
FOODS = (  # noqa: SIM905 (a word list reads better as one string)
    "bread soup cheese rice eggs cake pie porridge beans carrots potatoes biscuits honey jam milk "
    "noodles pancakes salad peas corn"
).split()
COLOURS = "red blue green yellow white black brown orange purple pink grey golden silver".split()  # noqa: SIM905 (a word list reads better as one string)
SIZES = "small big tiny large little tall long short round heavy light old new shiny soft".split()  # noqa: SIM905 (a word list reads better as one string)
FEELINGS = "happy sad tired excited scared proud calm surprised worried glad curious bored".split()  # noqa: SIM905 (a word list reads better as one string)
WEATHER = "sunny rainy windy cold warm cloudy foggy snowy bright grey".split()  # noqa: SIM905 (a word list reads better as one string)
TIMES = ["morning", "afternoon", "evening", "night"]
SEASONS = ["spring", "summer", "autumn", "winter"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = "January February March April May June July August September October November December".split()  # noqa: SIM905 (a word list reads better as one string)
NUMBER_WORDS = (  # noqa: SIM905 (a word list reads better as one string)
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty"
).split()
TOWN_STARTS = (  # noqa: SIM905 (a word list reads better as one string)
    "Ash Brook Clay Dun Elder Fern Glen Hart Ivy Kings Lark Moss North Pine Red Silver Thorn Wil"
).split()
TOWN_ENDS = "ford ton bury field wick dale more stead haven mouth vale wood by holm".split()  # noqa: SIM905 (a word list reads better as one string)

# The single facts the corpus teaches. Kept true and simple; the instruct sample tasks
# (opposites, plurals, sums, fruit colours, animal sounds, invented capitals) are left out so
# finetuning on them shows a visible drop in loss.
ANIMAL_FACTS = {
    "cat": ("four", "in a house with people", "fish and meat", "a pet"),
    "dog": ("four", "in a house with people", "meat and biscuits", "a pet"),
    "rabbit": ("four", "in a hole in the ground", "grass and carrots", "a small animal"),
    "fox": ("four", "in a den in the woods", "mice and berries", "a wild animal"),
    "owl": ("two", "in a hollow tree", "mice and insects", "a bird"),
    "duck": ("two", "near a pond", "seeds and small fish", "a bird"),
    "horse": ("four", "in a stable on a farm", "hay and grass", "a farm animal"),
    "goat": ("four", "on a farm or in the hills", "grass and leaves", "a farm animal"),
    "mouse": ("four", "in a small hole", "seeds and cheese", "a small animal"),
    "frog": ("four", "near a pond", "flies and insects", "a small animal"),
    "bear": ("four", "in a cave in the forest", "fish, berries and honey", "a wild animal"),
    "sheep": ("four", "in a field on a farm", "grass", "a farm animal"),
    "hen": ("two", "in a coop on a farm", "seeds and grain", "a bird"),
    "spider": ("eight", "in a web", "flies", "a small creature"),
    "ant": ("six", "in a nest under the ground", "seeds and crumbs", "an insect"),
    "bee": ("six", "in a hive", "nectar from flowers", "an insect"),
    "fish": ("no", "in the water", "small plants and insects", "a water animal"),
    "snake": ("no", "in the grass or under rocks", "mice and eggs", "a reptile"),
    "turtle": ("four", "in the sea or near a pond", "plants and small fish", "a reptile"),
    "squirrel": ("four", "in a tree", "nuts and seeds", "a small animal"),
}
JOBS = {
    "baker": "makes bread and cakes",
    "farmer": "grows food and looks after animals",
    "teacher": "helps children learn",
    "doctor": "helps sick people get better",
    "nurse": "cares for people in a hospital",
    "builder": "builds houses and walls",
    "fisherman": "catches fish from the sea",
    "painter": "paints pictures or walls",
    "cook": "makes meals in a kitchen",
    "driver": "drives a bus, a car or a truck",
    "pilot": "flies an aeroplane",
    "gardener": "looks after plants and flowers",
    "librarian": "looks after the books in a library",
    "postman": "brings letters to people's homes",
    "tailor": "makes and mends clothes",
    "carpenter": "makes things out of wood",
    "shopkeeper": "sells things in a shop",
    "vet": "helps sick animals",
}
WORKPLACES = {
    "baker": "a bakery",
    "farmer": "a farm",
    "teacher": "a school",
    "doctor": "a hospital",
    "nurse": "a hospital",
    "builder": "a building site",
    "fisherman": "a boat",
    "painter": "a studio",
    "cook": "a kitchen",
    "driver": "a bus",
    "pilot": "an aeroplane",
    "gardener": "a garden",
    "librarian": "a library",
    "postman": "a post office",
    "tailor": "a shop",
    "carpenter": "a workshop",
    "shopkeeper": "a shop",
    "vet": "an animal clinic",
}
OBJECT_DEFINITIONS = {
    "ball": "a round toy that you can throw, kick or bounce",
    "kite": "a light toy that flies in the wind on a long string",
    "key": "a small piece of metal that opens a lock",
    "lamp": "a thing that gives light in a room",
    "map": "a picture that shows where places are",
    "basket": "a container made of woven sticks or straw for carrying things",
    "boat": "a small vessel that floats and carries people on water",
    "bell": "a hollow metal object that rings when you shake or hit it",
    "umbrella": "a folding cover that keeps the rain off you",
    "candle": "a stick of wax with a string inside that you burn for light",
    "ladder": "a set of steps that you lean against a wall to climb up",
    "mirror": "a piece of glass in which you can see yourself",
    "compass": "a tool with a needle that always points north",
    "bucket": "an open container with a handle for carrying water",
    "whistle": "a small tube that makes a high sound when you blow into it",
    "clock": "a machine that shows the time",
    "lantern": "a lamp with a handle that you can carry",
    "shovel": "a tool with a wide blade for digging",
    "spoon": "a tool with a small bowl at the end for eating soup",
    "pillow": "a soft cushion for your head when you sleep",
    "library": "a building where people can borrow books",
    "bakery": "a shop where bread and cakes are made and sold",
    "harbour": "a place on the coast where boats are kept safe",
    "lighthouse": "a tall tower with a bright light that guides ships at night",
    "orchard": "a field where fruit trees grow",
    "meadow": "a field of grass and wild flowers",
    "bridge": "a path built over a river or a road",
    "island": "a piece of land with water all around it",
    "forest": "a large area with many trees",
    "village": "a small group of houses in the country",
}
NATURE_COLOURS = {
    "the sky on a clear day": "blue",
    "grass": "green",
    "snow": "white",
    "coal": "black",
    "the sun": "yellow",
    "a cloud": "white",
    "the sea": "blue",
    "soil": "brown",
    "a fire engine": "red",
    "the night sky": "black",
    "a leaf in summer": "green",
    "a leaf in autumn": "orange or brown",
    "milk": "white",
    "chocolate": "brown",
    "a crow": "black",
    "a swan": "white",
    "a frog": "green",
}
NATURE_FACTS = [
    "The sun rises in the morning and sets in the evening.",
    "Water freezes into ice when it is very cold.",
    "Plants need water and light to grow.",
    "Rain falls from clouds.",
    "The moon can be seen at night.",
    "Trees lose their leaves in autumn.",
    "Snow falls in winter when it is cold.",
    "Flowers bloom in spring.",
    "The days are long in summer and short in winter.",
    "Ice melts into water when it gets warm.",
    "Fish breathe under water.",
    "Birds build nests in trees.",
    "Bees make honey from the nectar of flowers.",
    "A river flows down to the sea.",
    "Wind can turn a windmill.",
    "Stars shine in the night sky.",
    "The sea is full of salt water.",
    "A seed grows into a plant.",
    "Mountains are very tall and often have snow on top.",
    "People see with their eyes and hear with their ears.",
    "A week has seven days.",
    "A year has twelve months.",
    "A day has twenty four hours.",
    "An hour has sixty minutes.",
    "A triangle has three sides.",
    "A square has four equal sides.",
    "A circle is round and has no corners.",
]
MATERIALS = {
    "spoon": "metal",
    "table": "wood",
    "window": "glass",
    "shirt": "cotton",
    "jumper": "wool",
    "bottle": "glass",
    "key": "metal",
    "chair": "wood",
    "candle": "wax",
    "brick": "clay",
    "coin": "metal",
    "book": "paper",
    "boot": "leather",
    "basket": "straw",
}
TASK_STEPS = {
    "make a cup of tea": [
        "Fill the kettle with water.",
        "Boil the water.",
        "Put a tea bag in a cup.",
        "Pour the hot water into the cup.",
        "Wait for three minutes.",
        "Take out the tea bag.",
        "Add milk if you like it.",
    ],
    "plant a seed": [
        "Fill a small pot with soil.",
        "Make a little hole with your finger.",
        "Drop the seed into the hole.",
        "Cover it with soil.",
        "Water it gently.",
        "Put the pot in a sunny place.",
        "Water it again every few days.",
    ],
    "wash your hands": [
        "Turn on the tap.",
        "Wet your hands.",
        "Put soap on your hands.",
        "Rub your hands together.",
        "Rinse off the soap.",
        "Turn off the tap.",
        "Dry your hands with a towel.",
    ],
    "make a sandwich": [
        "Take two slices of bread.",
        "Spread butter on the bread.",
        "Put cheese on one slice.",
        "Add some salad.",
        "Put the other slice on top.",
        "Cut the sandwich in half.",
    ],
    "build a sandcastle": [
        "Find a spot near the water.",
        "Fill a bucket with wet sand.",
        "Press the sand down hard.",
        "Turn the bucket upside down.",
        "Lift the bucket slowly.",
        "Dig a moat around the castle.",
        "Decorate it with shells.",
    ],
    "pack a bag for a trip": [
        "Check the weather.",
        "Choose your clothes.",
        "Fold them neatly.",
        "Put heavy things at the bottom.",
        "Add a toothbrush and soap.",
        "Pack a snack and a bottle of water.",
        "Close the bag.",
    ],
    "tidy your room": [
        "Open the window.",
        "Pick up the clothes from the floor.",
        "Put the toys back in the box.",
        "Make the bed.",
        "Put the books on the shelf.",
        "Sweep the floor.",
    ],
    "fly a kite": [
        "Wait for a windy day.",
        "Go to an open field.",
        "Stand with your back to the wind.",
        "Hold the kite up high.",
        "Let the wind lift it.",
        "Let out the string slowly.",
    ],
}
LIST_TOPICS = {
    "Things to take to the beach": [
        "a towel",
        "a hat",
        "a bucket",
        "a spade",
        "a bottle of water",
        "a sandwich",
        "a book",
        "a ball",
        "a blanket",
        "some fruit",
    ],
    "Things in my school bag": [
        "a pencil",
        "a notebook",
        "a ruler",
        "a lunch box",
        "a book",
        "a water bottle",
        "a rubber",
        "a coat",
        "a map",
    ],
    "Animals on the farm": [
        "cows",
        "pigs",
        "sheep",
        "hens",
        "horses",
        "goats",
        "ducks",
        "a dog",
        "a cat",
        "geese",
    ],
    "Things in the kitchen": [
        "a kettle",
        "a table",
        "four chairs",
        "a big pot",
        "a teapot",
        "plates",
        "cups",
        "spoons",
        "a bread bin",
        "a clock",
    ],
    "My favourite things": [
        "rainy days",
        "warm soup",
        "old books",
        "long walks",
        "my red bicycle",
        "the sea",
        "snow",
        "music",
        "my cat",
        "pancakes",
    ],
    "Things we saw in the forest": [
        "tall trees",
        "a fox",
        "mushrooms",
        "a stream",
        "an owl",
        "a deer",
        "moss on the rocks",
        "a squirrel",
        "berries",
        "ferns",
    ],
    "Jobs for Saturday": [
        "feed the hens",
        "water the garden",
        "fix the fence",
        "bake bread",
        "wash the car",
        "visit grandmother",
        "walk the dog",
        "sweep the yard",
    ],
}


def pick(rng: random.Random, items):
    return items[rng.randrange(len(items))]


def article(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def town_name(rng: random.Random) -> str:
    return pick(rng, TOWN_STARTS) + pick(rng, TOWN_ENDS)


def make_character(rng: random.Random) -> dict:
    if rng.random() < 0.5:
        return {"name": pick(rng, FEMALE_NAMES), "they": "she", "them": "her", "their": "her"}
    return {"name": pick(rng, MALE_NAMES), "they": "he", "them": "him", "their": "his"}


def story_slots(rng: random.Random) -> dict:
    hero, friend = make_character(rng), make_character(rng)
    while friend["name"] == hero["name"]:
        friend = make_character(rng)
    return {
        "A": hero["name"],
        "he": hero["they"],
        "him": hero["them"],
        "his": hero["their"],
        "B": friend["name"],
        "fhe": friend["they"],
        "fhis": friend["their"],
        "relative": pick(rng, RELATIVES),
        "animal": pick(rng, ANIMALS),
        "animal2": pick(rng, ANIMALS),
        "place": pick(rng, PLACES),
        "place2": pick(rng, PLACES),
        "object": pick(rng, OBJECTS),
        "colour": pick(rng, COLOURS),
        "size": pick(rng, SIZES),
        "size2": pick(rng, SIZES),
        "feeling": pick(rng, FEELINGS),
        "weather": pick(rng, WEATHER),
        "time": pick(rng, TIMES),
        "season": pick(rng, SEASONS),
        "day": pick(rng, DAYS),
        "food": pick(rng, FOODS),
        "town": town_name(rng),
        "number": pick(rng, NUMBER_WORDS[2:11]),
        "room": pick(rng, ROOMS),
    }


STORY_OPENINGS = [
    "Once upon a time, there was {a_size} {animal} named {A}.",
    "Once upon a time, in the village of {town}, there lived a child named {A}.",
    "One {weather} {time} in {season}, {A} went to {place}.",
    "{A} lived in a {size} house near {place}.",
    "It was a {weather} day in {town}, and {A} was {feeling}.",
    "Every {day}, {A} walked to {place} with {his} {relative}.",
    "There was once a {size} {colour} {object} that belonged to {A}.",
    "Long ago, {A} and {B} lived next to {place}.",
    "On the first day of {season}, {A} woke up early.",
    "{A} was {a_size} {animal} who loved {food}.",
]
STORY_MIDDLES = [
    "{A} had a friend named {B}.",
    "{B}, {his} {relative}, came along too.",
    "{A} had {a_colour} {object} that {he} carried everywhere.",
    "On the way, {A} found {a_colour} {object} under a tree.",
    "The sky was {colour_sky} and the air was {weather}.",
    "Birds sang in the trees and the wind moved the leaves.",
    "{A} saw {a_animal2} sitting by the path.",
    "They walked past {place2} and stopped to rest.",
    "{A} felt {feeling} and looked around.",
    "{B} said hello and smiled at {A}.",
    "They shared some {food} and talked for a long time.",
    "The {animal2} looked at them with {size} eyes.",
    "{A} counted {number} ducks on the water.",
    "The path was {size} and full of stones.",
    "{He} put the {object} in {his} bag and kept walking.",
]
STORY_PROBLEMS = [
    "But then the {object} fell into the water.",
    "Suddenly, it started to rain very hard.",
    "{A} could not find the {object} anywhere.",
    "The {object} was stuck at the top of a tall tree.",
    "{B} felt sad because {fhe} had lost {fhis} way.",
    "Then the wind blew the {object} far away.",
    "A {size} {animal2} ran off with the {object}.",
    "The door of {place2} was locked, and nobody had a key.",
    "{A} was hungry, but there was no {food} left.",
    "The bridge was broken and they could not cross the river.",
]
STORY_ATTEMPTS = [
    "{A} tried to reach it with a stick, but it was too far.",
    "{He} looked under every bush and behind every rock.",
    "{A} called for help, but nobody came at first.",
    "{B} climbed up, but {fhe} slipped and had to come down.",
    "They waited for a while and thought hard.",
    "{A} asked {a_animal} for help.",
]
STORY_RESOLUTIONS = [
    "Then {B} had an idea.",
    "At last, {A} found it behind {place2}.",
    "Together they pulled and pulled until it came free.",
    "A kind {relative} came by and helped them.",
    "Soon the sun came out again and everything was fine.",
    "{A} used the {object} to fix the problem.",
    "They worked together and solved the problem.",
    "The {animal2} came back and brought the {object} with it.",
]
STORY_ENDINGS = [
    "{A} smiled and said thank you.",
    "They went home happy and tired.",
    "From that day on, {A} always kept the {object} safe.",
    "That night, {A} slept well and dreamed of {place}.",
    "{A} and {B} became the best of friends.",
    "Everyone in {town} heard about it the next day.",
    "It had been a long day, but a good one.",
    "{A} could not wait to go back to {place}.",
]
STORY_MORALS = [
    "The lesson is that friends help each other.",
    "The lesson is that it is good to be patient.",
    "The lesson is that you should never give up.",
    "The lesson is to be kind to everyone you meet.",
    "The lesson is that sharing makes everyone happy.",
]


def fill(rng: random.Random, template: str, slots: dict) -> str:
    values = dict(slots)
    values["He"] = capitalise(slots["he"])
    values["a_size"] = article(slots["size"])
    values["a_colour"] = article(slots["colour"])
    values["a_animal"] = article(slots["animal"])
    values["a_animal2"] = article(slots["animal2"])
    values["colour_sky"] = pick(rng, ["blue", "grey", "pale", "clear", "dark"])
    return template.format(**values)


def generate_story(rng: random.Random, num_paragraphs: int | None = None) -> str:
    slots = story_slots(rng)
    sentences = [fill(rng, pick(rng, STORY_OPENINGS), slots)]
    # Keep the chosen middle sentences in list order: it introduces things before using them.
    for index in sorted(rng.sample(range(len(STORY_MIDDLES)), rng.randint(1, 4))):
        sentences.append(fill(rng, STORY_MIDDLES[index], slots))
    sentences.append(fill(rng, pick(rng, STORY_PROBLEMS), slots))
    for template in rng.sample(STORY_ATTEMPTS, rng.randint(0, 2)):
        sentences.append(fill(rng, template, slots))
    sentences.append(fill(rng, pick(rng, STORY_RESOLUTIONS), slots))
    sentences.append(fill(rng, pick(rng, STORY_ENDINGS), slots))
    if rng.random() < 0.25:
        sentences.append(pick(rng, STORY_MORALS))
    if num_paragraphs is None:
        num_paragraphs = rng.choice([1, 1, 2, 3])
    cut_points = sorted(rng.sample(range(1, len(sentences)), min(num_paragraphs, len(sentences)) - 1))
    paragraphs, start = [], 0
    for cut in [*cut_points, len(sentences)]:
        paragraphs.append(" ".join(sentences[start:cut]))
        start = cut
    return "\n\n".join(paragraphs)


def animal_fact_sentences(rng: random.Random, animal: str) -> list[str]:
    legs, home, eats, kind = ANIMAL_FACTS[animal]
    plural = animal if animal in ("fish", "sheep") else animal + "s"
    leg_sentence = f"A {animal} has no legs." if legs == "no" else f"A {animal} has {legs} legs."
    return [
        f"{capitalise(article(animal))} is {kind}.",
        leg_sentence,
        f"A {animal} lives {home}.",
        f"{capitalise(plural)} eat {eats}.",
        pick(
            rng,
            [
                f"Many children like to watch {plural}.",
                f"You can sometimes see {plural} in {pick(rng, PLACES)}.",
            ],
        ),
    ]


def generate_facts(rng: random.Random) -> str:
    kind = rng.randrange(5)
    if kind == 0:
        animal = pick(rng, list(ANIMAL_FACTS))
        title = pick(rng, [f"All about the {animal}", f"Facts about {animal}s", f"The {animal}"])
        sentences = animal_fact_sentences(rng, animal)
        rng.shuffle(sentences)
        return title + "\n\n" + " ".join(sentences[: rng.randint(3, 5)])
    if kind == 1:
        jobs = rng.sample(list(JOBS), rng.randint(3, 6))
        lines = [f"A {job} {JOBS[job]}. A {job} works in {WORKPLACES[job]}." for job in jobs]
        return (
            pick(rng, ["People and their jobs", "Jobs in our town", "Who does what?"])
            + "\n\n"
            + " ".join(lines)
        )
    if kind == 2:
        facts = rng.sample(NATURE_FACTS, rng.randint(3, 7))
        return (
            pick(rng, ["Some facts about the world", "Did you know?", "Things to know"])
            + "\n\n"
            + "\n".join(f"- {fact}" for fact in facts)
        )
    if kind == 3:
        things = rng.sample(list(NATURE_COLOURS), rng.randint(3, 6))
        return "Colours around us\n\n" + " ".join(
            f"{capitalise(thing)} is {NATURE_COLOURS[thing]}." for thing in things
        )
    items = rng.sample(list(MATERIALS), rng.randint(3, 6))
    return "What things are made of\n\n" + " ".join(
        f"A {item} is made of {MATERIALS[item]}." for item in items
    )


def generate_description(rng: random.Random) -> str:
    slots = story_slots(rng)
    kind = rng.randrange(3)
    if kind == 0:
        room = slots["room"]
        sentences = [
            f"The {room} is {slots['size']} and {pick(rng, ['warm', 'cold', 'quiet', 'bright', 'dusty', 'clean'])}.",
            f"There is {article(pick(rng, COLOURS))} {pick(rng, ['chair', 'table', 'rug', 'shelf', 'bench', 'cupboard'])} by the window.",
            f"On the table there is {article(pick(rng, COLOURS))} {pick(rng, OBJECTS)} and {article(pick(rng, OBJECTS))}.",
            f"The walls are {pick(rng, COLOURS)}, and the floor is made of {pick(rng, ['wood', 'stone', 'tiles'])}.",
            f"In the corner, {article(slots['animal'])} is sleeping on {article(pick(rng, ['blanket', 'pillow', 'box', 'rug']))}.",
            f"In the {pick(rng, TIMES)}, the light comes in through a {pick(rng, SIZES)} window.",
        ]
    elif kind == 1:
        job = pick(rng, list(JOBS))
        sentences = [
            f"{slots['A']} is {article(job)}.",
            f"{capitalise(slots['he'])} {JOBS[job]}.",
            f"{capitalise(slots['he'])} has {pick(rng, ['short', 'long', 'curly', 'straight'])} {pick(rng, ['brown', 'black', 'red', 'grey', 'fair'])} hair.",
            f"{capitalise(slots['he'])} often wears {article(pick(rng, COLOURS))} {pick(rng, ['coat', 'hat', 'scarf', 'jumper', 'apron'])}.",
            f"Every {pick(rng, TIMES)}, {slots['he']} goes to {pick(rng, PLACES)}.",
            f"{capitalise(slots['his'])} favourite food is {pick(rng, FOODS)}.",
            f"{capitalise(slots['he'])} has {article(slots['animal'])} called {pick(rng, FEMALE_NAMES + MALE_NAMES)}.",
        ]
    else:
        town = slots["town"]
        buildings = rng.sample(
            [
                "a bakery",
                "a school",
                "a church",
                "a library",
                "a market",
                "a mill",
                "a post office",
                "a small harbour",
                "a park",
                "a station",
            ],
            3,
        )
        sentences = [
            f"{town} is a {pick(rng, ['small', 'quiet', 'busy', 'pretty', 'old'])} town near {pick(rng, ['the sea', 'a river', 'the hills', 'a forest', 'a lake'])}.",
            f"It has {buildings[0]}, {buildings[1]} and {buildings[2]}.",
            f"About {pick(rng, ['two hundred', 'five hundred', 'one thousand', 'three thousand'])} people live there.",
            f"In {slots['season']}, the streets are {pick(rng, ['full of flowers', 'covered in snow', 'wet with rain', 'warm and dusty'])}.",
            f"On {slots['day']}s there is a market where people sell {pick(rng, FOODS)} and {pick(rng, FOODS)}.",
            f"The oldest building in {town} is {pick(rng, ['the church', 'the mill', 'the bridge', 'the tower'])}.",
        ]
    keep = sorted(rng.sample(range(len(sentences)), rng.randint(3, len(sentences))))
    return " ".join(sentences[index] for index in keep)


DIALOGUE_SCENES = [
    [
        ('"Where are you going?" asked {B}.', '"I am going to {place}," said {A}.'),
        ('"Can I come with you?" asked {B}.', '"Yes, of course," said {A}. "Bring your {object}."'),
        ('"What will we do there?" asked {B}.', '"We will look for {a_animal}," said {A}.'),
    ],
    [
        (
            '"Good {time}," said the shopkeeper. "What would you like?"',
            '"I would like some {food}, please," said {A}.',
        ),
        ('"Anything else?"', '"Yes, some {food2} too," said {A}.'),
        ('"That is {number} coins," said the shopkeeper.', '"Here you are," said {A}. "Thank you."'),
    ],
    [
        ('"What is the weather like today?" asked {A}.', '"It is {weather}," said {B}.'),
        ('"Should I take my {object}?" asked {A}.', '"Yes, I think you should," said {B}.'),
    ],
    [
        ('"Have you seen my {object}?" asked {A}.', '"No, I have not," said {B}. "Where did you leave it?"'),
        ('"I left it in the {room}," said {A}.', '"Let us look there together," said {B}.'),
        ('"Here it is!" said {B}.', '"Thank you so much," said {A}.'),
    ],
    [
        ('"What do you want to be when you grow up?" asked {B}.', '"I want to be {a_job}," said {A}.'),
        ('"Why?" asked {B}.', '"Because {a_job_he} {job_does}," said {A}.'),
    ],
    [
        ('"Are you {feeling}?" asked {B}.', '"A little," said {A}. "It has been a long day."'),
        ('"Would you like some {food}?"', '"Yes, please," said {A}, and smiled.'),
    ],
]


def generate_dialogue(rng: random.Random) -> str:
    slots = story_slots(rng)
    job = pick(rng, list(JOBS))
    extra = {
        "food2": pick(rng, FOODS),
        "a_job": article(job),
        "a_job_he": "a " + job if job[0] not in "aeiou" else "an " + job,
        "job_does": JOBS[job],
    }
    lines = []
    if rng.random() < 0.5:
        lines.append(fill(rng, pick(rng, STORY_OPENINGS), slots))
    for question, answer in pick(rng, DIALOGUE_SCENES):
        lines.append(fill(rng, question, {**slots, **extra}))
        lines.append(fill(rng, answer, {**slots, **extra}))
    if rng.random() < 0.5:
        lines.append(fill(rng, pick(rng, STORY_ENDINGS), slots))
    return "\n".join(lines)


def generate_list(rng: random.Random) -> str:
    if rng.random() < 0.5:
        task = pick(rng, list(TASK_STEPS))
        steps = TASK_STEPS[task]
        title = pick(rng, [f"How to {task}", f"Steps to {task}", f"Here is how to {task}."])
        return title + "\n\n" + "\n".join(f"{index}. {step}" for index, step in enumerate(steps, 1))
    topic = pick(rng, list(LIST_TOPICS))
    items = rng.sample(LIST_TOPICS[topic], rng.randint(3, 7))
    bullet = pick(rng, ["- ", "* ", ""])
    return f"{topic}:\n" + "\n".join(bullet + item for item in items)


def generate_letter(rng: random.Random) -> str:
    slots = story_slots(rng)
    if rng.random() < 0.5:
        body = (
            f"Dear {slots['B']},\n\n"
            f"I hope you are well. Today I went to {slots['place']} with my {slots['relative']}. "
            f"The weather was {slots['weather']} and we saw {article(slots['animal'])}. "
            f"I found {article(slots['colour'])} {slots['object']} and I will show it to you soon. "
            f"Please write back and tell me about your {slots['season']}.\n\n"
            f"{pick(rng, ['Love', 'Best wishes', 'Your friend', 'See you soon'])},\n{slots['A']}"
        )
        return body
    return (
        f"{slots['day']}, {rng.randint(1, 28)} {pick(rng, MONTHS)}\n\n"
        f"Today was a {pick(rng, ['good', 'long', 'strange', 'quiet', 'busy'])} day. "
        f"In the {slots['time']} I went to {slots['place']}. "
        f"I had {slots['food']} for lunch. I feel {slots['feeling']} now. "
        f"Tomorrow I want to {pick(rng, list(TASK_STEPS))}."
    )


# ---------------------------------------------------------------------------------------------
# Chat conversations: generic assistant Q&A so the model knows the ChatML layout.
# ---------------------------------------------------------------------------------------------

SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a friendly assistant. Give short, clear answers.",
    "You are a helpful assistant who answers in one sentence.",
]


def chat_exchange(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(11)
    if kind == 0:
        thing = pick(rng, list(NATURE_COLOURS))
        return f"What colour is {thing}?", f"{capitalise(thing)} is {NATURE_COLOURS[thing]}."
    if kind == 1:
        job = pick(rng, list(JOBS))
        question = pick(rng, [f"What is {article(job)}?", f"What does {article(job)} do?"])
        return question, f"{capitalise(article(job))} is a person who {JOBS[job]}."
    if kind == 2:
        word = pick(rng, list(OBJECT_DEFINITIONS))
        question = pick(
            rng,
            [
                f"What is {article(word)}?",
                f"What does the word {word} mean?",
                f"Can you explain what {article(word)} is?",
            ],
        )
        return question, f"{capitalise(article(word))} is {OBJECT_DEFINITIONS[word]}."
    if kind == 3:
        start = rng.randint(1, 12)
        end = start + rng.randint(2, 7)
        question = pick(rng, [f"Count from {start} to {end}.", f"Please count from {start} to {end}."])
        return question, ", ".join(str(number) for number in range(start, end + 1)) + "."
    if kind == 4:
        animal = pick(rng, list(ANIMAL_FACTS))
        legs = ANIMAL_FACTS[animal][0]
        answer = f"A {animal} has no legs." if legs == "no" else f"A {animal} has {legs} legs."
        return f"How many legs does {article(animal)} have?", answer
    if kind == 5:
        animal = pick(rng, list(ANIMAL_FACTS))
        return (
            f"Where does {article(animal)} live?",
            f"{capitalise(article(animal))} lives {ANIMAL_FACTS[animal][1]}.",
        )
    if kind == 6:
        index = rng.randrange(7)
        return f"What day comes after {DAYS[index]}?", f"{DAYS[(index + 1) % 7]} comes after {DAYS[index]}."
    if kind == 7:
        category, options = pick(
            rng, [("animals", ANIMALS), ("colours", COLOURS), ("foods", FOODS), ("jobs", list(JOBS))]
        )
        chosen = rng.sample(options, 3)
        return (
            f"Name three {category}.",
            f"Here are three {category}: {chosen[0]}, {chosen[1]} and {chosen[2]}.",
        )
    if kind == 8:
        slots = story_slots(rng)
        return (
            f"Tell me a short story about {slots['A']} and {article(slots['object'])}.",
            generate_story(rng, num_paragraphs=1),
        )
    if kind == 9:
        greeting, reply = pick(
            rng,
            [
                ("Hello!", "Hello! How can I help you today?"),
                ("Hi there.", "Hi! What would you like to know?"),
                ("Thank you.", "You are welcome."),
                ("Thanks for your help.", "You are welcome. I am glad I could help."),
                ("Good morning.", "Good morning! How can I help?"),
                ("Who are you?", "I am a helpful assistant. I can answer simple questions."),
            ],
        )
        return greeting, reply
    task = pick(rng, list(TASK_STEPS))
    steps = TASK_STEPS[task]
    return f"How do I {task}?", "Here is how: " + " ".join(steps[: rng.randint(3, len(steps))])


def render_chat(messages: list[dict]) -> str:
    # Written out by hand (the tokenizer does not exist yet); must match CHAT_TEMPLATE exactly.
    return "".join(f"{IM_START}{message['role']}\n{message['content']}{IM_END}\n" for message in messages)


def generate_chat(rng: random.Random) -> str:
    messages = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": pick(rng, SYSTEM_PROMPTS)})
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        question, answer = chat_exchange(rng)
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return render_chat(messages)


GENERAL_GENERATORS = [
    (generate_story, 0.40),
    (generate_facts, 0.12),
    (generate_description, 0.14),
    (generate_dialogue, 0.14),
    (generate_list, 0.10),
    (generate_letter, 0.10),
]
CHAT_FRACTION = 0.19  # of documents; chats are shorter than stories, so ~17% of the bytes
HELDOUT_FRACTION = 0.04


def generate_corpus(seed: int, target_bytes: int) -> dict[str, list[str]]:
    """Return {"train": [...], "heldout_general": [...], "heldout_chat": [...]} documents."""
    rng = random.Random(seed)
    generators, weights = zip(*GENERAL_GENERATORS, strict=True)
    corpus: dict[str, list[str]] = {"train": [], "heldout_general": [], "heldout_chat": []}
    seen: set[str] = set()
    total_bytes = 0
    while total_bytes < target_bytes:
        is_chat = rng.random() < CHAT_FRACTION
        document = generate_chat(rng) if is_chat else rng.choices(generators, weights)[0](rng)
        # Short documents (facts, chats) can repeat; a held-out document that also sits in train
        # would flatter the perplexity, so every document is kept once.
        if document in seen:
            continue
        seen.add(document)
        total_bytes += len(document.encode())
        if rng.random() < HELDOUT_FRACTION:
            corpus["heldout_chat" if is_chat else "heldout_general"].append(document)
        else:
            corpus["train"].append(document)
    return corpus


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------


def train_tokenizer(documents: list[str]) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is encodable
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        bos_token=None,
        extra_special_tokens=[IM_START, IM_END],
        model_max_length=CONTEXT_LENGTH,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    for index, token in enumerate(SPECIAL_TOKENS):
        assert wrapped.convert_tokens_to_ids(token) == index, token
    return wrapped


def check_tokenizer(directory: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(directory)
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What colour is grass?"},
        {"role": "assistant", "content": "Grass is green."},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat colour is grass?<|im_end|>\n"
        "<|im_start|>assistant\nGrass is green.<|im_end|>\n"
    )
    assert rendered == expected, rendered
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n"), prompt
    encoded = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    masked = [
        token for token, keep in zip(encoded["input_ids"], encoded["assistant_masks"], strict=True) if keep
    ]
    assert tokenizer.decode(masked) == "Grass is green.<|im_end|>", tokenizer.decode(masked)
    assert tokenizer.eos_token_id == 0 and tokenizer.pad_token_id == 0 and tokenizer.bos_token is None
    assert tokenizer("<|im_start|>user<|im_end|>")["input_ids"][0] == 1
    print("tokenizer ok: chat template renders, assistant mask covers the reply and <|im_end|>")


# ---------------------------------------------------------------------------------------------
# Model, data and training
# ---------------------------------------------------------------------------------------------


def build_config(vocab_size: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,  # what BPE actually learned; it can stop short of VOCAB_SIZE
        hidden_size=160,
        intermediate_size=448,
        num_hidden_layers=6,
        num_attention_heads=5,  # head dimension 32
        num_key_value_heads=1,  # multi-query attention: keeps the file small and the KV cache tiny
        max_position_embeddings=CONTEXT_LENGTH,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,  # the embedding is a quarter of the parameters; do not store it twice
        bos_token_id=None,
        eos_token_id=0,
        pad_token_id=0,
        use_cache=True,
    )


def pack_blocks(tokenizer: PreTrainedTokenizerFast, documents: list[str]) -> torch.Tensor:
    stream: list[int] = []
    for document in documents:
        stream.append(tokenizer.eos_token_id)
        stream.extend(tokenizer(document)["input_ids"])
    num_blocks = len(stream) // BLOCK_LENGTH
    return torch.tensor(stream[: num_blocks * BLOCK_LENGTH], dtype=torch.long).view(num_blocks, BLOCK_LENGTH)


def learning_rate_at(step: int, max_steps: int, peak: float, warmup_steps: int) -> float:
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))  # floor at 10% of peak


def train(model: LlamaForCausalLM, blocks: torch.Tensor, args: argparse.Namespace) -> dict:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.learning_rate,
        betas=(0.9, 0.95),
    )
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(blocks), generator=generator)
    cursor = 0
    model.train()
    start = time.perf_counter()
    log_start, log_tokens, log_loss = start, 0, 0.0
    for step in range(args.max_steps):
        if cursor + args.batch_size > len(order):
            order, cursor = torch.randperm(len(blocks), generator=generator), 0
        batch = blocks[order[cursor : cursor + args.batch_size]]
        cursor += args.batch_size
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, args.max_steps, args.learning_rate, args.warmup_steps)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        log_tokens += batch.numel()
        log_loss += loss.item()
        if (step + 1) % args.log_every == 0 or step + 1 == args.max_steps:
            now = time.perf_counter()
            num_logged = (step % args.log_every) + 1
            print(
                f"step {step + 1:5d}/{args.max_steps}  loss {log_loss / num_logged:.3f}  "
                f"lr {optimizer.param_groups[0]['lr']:.2e}  {log_tokens / (now - log_start):,.0f} tok/s  "
                f"elapsed {now - start:.0f}s",
                flush=True,
            )
            log_start, log_tokens, log_loss = now, 0, 0.0
    model.eval()
    seconds = time.perf_counter() - start
    num_tokens = args.max_steps * args.batch_size * BLOCK_LENGTH
    return {"seconds": seconds, "tokens": num_tokens, "epochs": num_tokens / blocks.numel()}


@torch.no_grad()
def document_perplexity(model, tokenizer, documents: list[str]) -> float:
    """Perplexity over all tokens of each document (plus its closing <|endoftext|>), each
    document scored on its own after an <|endoftext|> that stands in for a BOS token."""
    total_loss, total_tokens = 0.0, 0
    for document in documents:
        ids = [tokenizer.eos_token_id, *tokenizer(document)["input_ids"], tokenizer.eos_token_id]
        ids = torch.tensor([ids[:CONTEXT_LENGTH]])
        loss = model(input_ids=ids, labels=ids).loss
        num_predicted = ids.shape[1] - 1
        total_loss += loss.item() * num_predicted
        total_tokens += num_predicted
    return math.exp(total_loss / total_tokens)


def generation_samples(model, tokenizer) -> list[tuple[str, str]]:
    prompts = [
        "Once upon a time,",
        "Facts about owls\n\n",
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "What does a gardener do?"}],
            tokenize=False,
            add_generation_prompt=True,
        ),
    ]
    samples = []
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt")
        output = model.generate(**inputs, max_new_tokens=48, do_sample=False)
        samples.append(
            (prompt, tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
        )
    return samples


MODEL_CARD = """---
license: apache-2.0
language: en
library_name: transformers
pipeline_tag: text-generation
tags: [tunesmith, tiny, llama, testing]
---

# tunesmith tiny base model

A very small Llama trained from scratch, shipped inside tunesmith so that the demo, the
examples and the tests run offline on a laptop CPU with no model download. It writes simple
English and knows the ChatML layout; it is a stand-in for a real base model, not a useful
assistant.

## Architecture

| | |
|---|---|
| class | `LlamaForCausalLM` (loads with plain `AutoModelForCausalLM.from_pretrained`) |
| parameters | {num_parameters:,} (embedding tied with the LM head) |
| layers / hidden / MLP | {num_layers} / {hidden_size} / {intermediate_size} |
| attention | {num_heads} query heads, {num_kv_heads} key/value head (head dim {head_dim}), RoPE theta {rope_theta:g} |
| context | {context_length} tokens (trained on packed blocks of {block_length}) |
| weights | `model.safetensors`, fp32, {safetensors_bytes:,} bytes |

## Tokenizer

Byte-level BPE (`tokenizers`), {vocab_size} tokens, trained on the training split of the corpus
below. Special tokens: `<|endoftext|>` = 0 (EOS and padding), `<|im_start|>` = 1,
`<|im_end|>` = 2. No BOS token. ChatML chat template with `{{% generation %}}` markers, so
`apply_chat_template(..., return_assistant_tokens_mask=True)` marks the assistant replies
and their `<|im_end|>`. `generation_config.json` stops on `<|im_end|>` or `<|endoftext|>`.

## Training data

Our own procedurally generated English, written by `scripts/build_base_model.py` from
templates and word lists with a fixed seed ({seed}); no text was downloaded or copied. The
text is released under **CC0-1.0**. Documents: short stories (characters, places, objects,
a small problem and its resolution), simple facts (animals, jobs, nature, materials), descriptions
of rooms, people and towns, dialogues, lists and how-to steps, letters and diary entries, and
about {chat_percent:.0f}% of the bytes as ChatML conversations of generic assistant Q&A
(colours, definitions, counting, days, short stories on request).

| split | documents | bytes |
|---|---|---|
| train | {num_train_documents:,} | {train_bytes:,} |
| held-out general text | {num_heldout_general:,} | {heldout_general_bytes:,} |
| held-out chats | {num_heldout_chat:,} | {heldout_chat_bytes:,} |

Held-out documents are split off by document before the tokenizer is trained, and no document
appears twice. The held-out general text ships as `tunesmith/assets/general_heldout.txt` (the
default general text for forgetting probes).

## Training

Plain PyTorch loop, fp32, {num_threads} CPU threads: AdamW (betas 0.9/0.95, weight decay 0.1 on
matrices), peak learning rate {learning_rate:g}, {warmup_steps} warmup steps then cosine decay
to 10%, gradient clipping at 1.0, batch {batch_size} x {block_length} tokens, documents packed and
separated by `<|endoftext|>`. {max_steps} steps, {num_tokens:,} tokens ({epochs:.1f} epochs),
{train_minutes:.1f} minutes on {machine}.

## Evaluation

Perplexity on the held-out documents (each scored on its own after an `<|endoftext|>`):

| model | held-out general text | held-out chats |
|---|---|---|
| this model | **{ppl_trained:.2f}** | **{ppl_trained_chat:.2f}** |
| random init of the same shape (seed {seed}) | {ppl_random:.1f} | {ppl_random_chat:.1f} |

Greedy samples:

{samples}

## Licence

Weights: Apache-2.0 (the tunesmith project licence). Training text and tokenizer data: our own
generated text, CC0-1.0.

## Rebuild

```
{command}
```
"""


def write_model_card(path: Path, facts: dict) -> None:
    samples = "\n\n".join(
        f"```\n{prompt}\u2192 {completion}\n```" for prompt, completion in facts.pop("sample_pairs")
    )
    path.write_text(MODEL_CARD.format(samples=samples, **facts))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="directory for the model and tokenizer")
    parser.add_argument("--heldout-out", type=Path, default=DEFAULT_HELDOUT_PATH)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--corpus-bytes", type=int, default=5_000_000)
    parser.add_argument("--max-steps", type=int, default=300)  # ~1 epoch; loss flattens after that
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=3e-3)  # tiny models tolerate a high peak
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--log-every", type=int, default=50)
    # One thread trains faster than two when other jobs share the two cores (no OpenMP barrier stalls).
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    corpus = generate_corpus(args.seed, args.corpus_bytes)
    byte_counts = {split: sum(len(doc.encode()) for doc in docs) for split, docs in corpus.items()}
    chat_bytes = sum(len(doc.encode()) for doc in corpus["train"] if doc.startswith(IM_START))
    print({split: len(docs) for split, docs in corpus.items()}, byte_counts, flush=True)

    heldout_text = "\n\n".join(doc.strip() for doc in corpus["heldout_general"]) + "\n"
    args.heldout_out.parent.mkdir(parents=True, exist_ok=True)
    args.heldout_out.write_text(heldout_text)

    tokenizer = train_tokenizer(corpus["train"])
    tokenizer.save_pretrained(args.out)
    check_tokenizer(args.out)

    blocks = pack_blocks(tokenizer, corpus["train"])
    print(
        f"train tokens: {blocks.numel():,} in {len(blocks):,} blocks; "
        f"{byte_counts['train'] / blocks.numel():.2f} bytes/token",
        flush=True,
    )

    config = build_config(len(tokenizer))
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(config)
    model.config.use_cache = False  # no KV cache while training; set back before saving
    num_parameters = sum(parameter.numel() for parameter in model.parameters())
    print(f"parameters: {num_parameters:,}", flush=True)

    # Score the untouched initial weights first: this is the "random init" baseline.
    model.eval()
    heldout_chat = corpus["heldout_chat"]
    ppl_random = document_perplexity(model, tokenizer, corpus["heldout_general"])
    ppl_random_chat = document_perplexity(model, tokenizer, heldout_chat)
    print(f"random init perplexity: general {ppl_random:.1f}, chat {ppl_random_chat:.1f}", flush=True)

    stats = train(model, blocks, args)
    ppl_trained = document_perplexity(model, tokenizer, corpus["heldout_general"])
    ppl_trained_chat = document_perplexity(model, tokenizer, heldout_chat)
    print(f"trained perplexity: general {ppl_trained:.2f}, chat {ppl_trained_chat:.2f}", flush=True)

    model.config.use_cache = True  # inference default for whoever loads the saved model
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids(IM_END), tokenizer.eos_token_id],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model.save_pretrained(args.out)
    safetensors_path = args.out / "model.safetensors"
    safetensors_bytes = safetensors_path.stat().st_size
    assert safetensors_bytes <= MAX_SAFETENSORS_BYTES, f"model.safetensors is {safetensors_bytes:,} bytes"

    # Reload from disk with the plain Auto classes to prove the directory stands on its own.
    reloaded = AutoModelForCausalLM.from_pretrained(args.out)
    reloaded.eval()
    saved = load_file(safetensors_path)
    assert all(
        torch.equal(saved[name], tensor) for name, tensor in reloaded.state_dict().items() if name in saved
    )
    reloaded_tokenizer = AutoTokenizer.from_pretrained(args.out)
    sample_pairs = generation_samples(reloaded, reloaded_tokenizer)
    for prompt, completion in sample_pairs:
        print(repr(prompt), "->", repr(completion))

    write_model_card(
        args.out / "README.md",
        {
            "num_parameters": num_parameters,
            "num_layers": config.num_hidden_layers,
            "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size,
            "num_heads": config.num_attention_heads,
            "num_kv_heads": config.num_key_value_heads,
            "head_dim": config.hidden_size // config.num_attention_heads,
            "rope_theta": 10000.0,
            "context_length": CONTEXT_LENGTH,
            "block_length": BLOCK_LENGTH,
            "safetensors_bytes": safetensors_bytes,
            "vocab_size": len(tokenizer),
            "seed": args.seed,
            "chat_percent": 100 * chat_bytes / byte_counts["train"],
            "num_train_documents": len(corpus["train"]),
            "train_bytes": byte_counts["train"],
            "num_heldout_general": len(corpus["heldout_general"]),
            "heldout_general_bytes": byte_counts["heldout_general"],
            "num_heldout_chat": len(heldout_chat),
            "heldout_chat_bytes": byte_counts["heldout_chat"],
            "num_threads": args.threads,
            "learning_rate": args.learning_rate,
            "warmup_steps": args.warmup_steps,
            "batch_size": args.batch_size,
            "max_steps": args.max_steps,
            "num_tokens": stats["tokens"],
            "epochs": stats["epochs"],
            "train_minutes": stats["seconds"] / 60,
            "machine": f"{platform.machine()} {platform.processor() or 'CPU'}, torch {torch.__version__}",
            "ppl_trained": ppl_trained,
            "ppl_trained_chat": ppl_trained_chat,
            "ppl_random": ppl_random,
            "ppl_random_chat": ppl_random_chat,
            "sample_pairs": sample_pairs,
            "command": shlex.join(["python", "scripts/build_base_model.py", *sys.argv[1:]]),
        },
    )
    print(
        json.dumps(
            {
                "parameters": num_parameters,
                "safetensors_bytes": safetensors_bytes,
                "ppl_trained": ppl_trained,
                "ppl_random": ppl_random,
                **stats,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
