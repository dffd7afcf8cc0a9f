"""The words of the support rules: how shoppers name attributes, countries, ingredients and claims.

Hand-written on purpose: they are domain knowledge (and the Swedish words of the grocery sheets), not
code. The rules in `answers` match them as whole words after light singularisation.
"""

from __future__ import annotations

import re

WH = frozenset({"what", "whats", "which", "where", "wheres", "who", "whos", "whose", "how", "hows", "when", "why"})
EMBEDDED_WH = re.compile(r"\b(?:tell me|know|wondering|say)\s+(?:what|which|where|who|how)\b")
# Words that do not change what a yes/no question asks ("is this one an apple, actually?").
FRAME = frozenset({
    "a", "an", "the", "this", "these", "that", "those", "it", "its", "it's", "they", "them", "one", "ones",
    "is", "are", "was", "were", "be", "been", "does", "do", "did", "can", "could", "would", "will", "should",
    "shall", "may", "might", "i", "im", "my", "me", "we", "our", "us", "you", "your", "he", "she", "her",
    "his", "him", "of", "in", "on", "at", "for", "to", "from", "with", "by", "as", "really", "actually",
    "also", "too", "still", "some", "kind", "type", "sort", "product", "item", "thing", "here", "there",
    "please", "ok", "okay", "just", "only", "so", "and", "or", "but", "if", "then", "right", "correct", "sure",
    "exactly", "called", "named", "considered", "count", "counts", "real", "come", "comes", "came", "sold",
    "made", "grown", "produced", "look", "looks", "like", "yes", "no", "yeah", "yep", "buy", "purchase", "get",
    "want", "wanted", "need", "looking"
})
COMPARATIVE = re.compile(r"\b(than|compared|versus|vs|better|worse|sweeter|sourer|healthier|cheaper)\b")
# Open questions about a sheet field: which field a question asks for, by its words.
OPEN_INTENTS = (
    ("nutrition", re.compile(r"\b(calori\w*|kcal|kilojoules?|kj|nutrition\w*|nutrients?|nutritional"
                             r"|how much (sugar|fat|protein|salt|fibre|fiber|carb\w*|calcium|energy)"
                             r"|(sugar|fat|protein|salt|calcium|carb\w*|fibre|fiber) (content|percent\w*))\b")),
    ("origin", re.compile(r"\b(where\b.*\b(from|made|grown|produced|come|comes|packed)"
                          r"|(which|what) country|country of origin|origin)\b")),
    ("brand", re.compile(r"\b(who (makes|made|produces|produced|manufactures)"
                         r"|(which|what) (company|brand|manufacturer|producer|maker)|manufacturer|brand is)\b")),
    ("size", re.compile(r"\b(how (big|heavy|large|much does (it|one|this|that|a|an)\b.*\bweigh)"
                        r"|weigh|weight|what size|pack size|size of|how many (grams|litres|liters|kilos|ml|dl)"
                        r"|how much (is in|comes in|does (it|the pack|this pack) (hold|contain))"
                        r"|in (one|a|the|each|this) (pack|package|bag|box|carton|bottle|tub))\b")),
    ("ingredients", re.compile(r"\b(ingredients?|what('?s| is| are) in (it|this|these|there)|made of|additives?"
                               r"|what does it contain|how much \w+( \w+)? (is|are) (actually )?in"
                               r"|percent\w*|proportion|share of)\b|%")),
)
NAME_QUESTION = re.compile(r"^(what|which)( (fruit|vegetable|veg|product|item|thing|kind|type|sort)( of \w+)?)?"
                           r" (is|are) (this|it|these|that|those)\b")
# A nutrient a shopper names -> words of a sheet's nutrition table (English and Swedish).
NUTRIENTS = {
    "energy": ("energ", "kilokalori", "kcal", "kilojoule", "calor"), "sugar": ("sugar", "socker"),
    "fat": ("fat", "fett"), "protein": ("protein",), "salt": ("salt",), "calcium": ("calcium", "kalcium"),
    "fibre": ("fiber", "fibre"), "carbohydrate": ("kolhydrat", "carbohydrate"),
}
NUTRIENT_WORDS = {"calorie": "energy", "calory": "energy", "kcal": "energy", "kilojoule": "energy", "kj": "energy",
                  "energy": "energy", "sugar": "sugar", "fat": "fat", "protein": "protein", "salt": "salt",
                  "calcium": "calcium", "fibre": "fibre", "fiber": "fibre", "carb": "carbohydrate",
                  "carbohydrate": "carbohydrate"}
UNITS = {"l": 1000.0, "litre": 1000.0, "liter": 1000.0, "dl": 100.0, "cl": 10.0, "ml": 1.0, "kg": 1000.0,
         "kilo": 1000.0, "g": 1.0, "gram": 1.0, "gramme": 1.0}
QUANTITY = re.compile(r"(\d+(?:[.,]\d+)?)\s*(litres?|liters?|l|dl|cl|ml|kilos?|kg|grammes?|grams?|g)\b")


# Shoppers' words for the catalogue's words. Keys are attribute flags, group names or `group=value`.
FLAG_WORDS = {"organic": ("organic", "organically", "ecological", "eco", "bio", "ekologisk", "krav")}
# Words that ask for a flag's absence ("a regular non-organic product?").
FLAG_AGAINST = {"organic": ("conventional", "conventionally", "inorganic", "non organic", "not organic")}
# Words before a question proper ("hey, where do these come from?").
OPENERS = frozenset({"hey", "hi", "hello", "so", "ok", "okay", "um", "please", "sorry", "excuse", "me", "and", "but",
                     "quick", "question", "also", "oh"})
# A bare "lactose" asks for its presence only with one of these ("does it contain lactose?").
PRESENCE = ("contain", "contains", "containing", "have", "has", "with", "any", "in it", "in this", "include",
            "includes", "added")
GROUP_CUES = {
    "colour": ("colour", "color", "coloured", "colored"),
    "flavour": ("flavour", "flavor", "flavoured", "flavored", "taste", "tastes", "tasting"),
    "packaging": ("packaging", "packed", "package", "packaged", "come in", "comes in", "sold in", "sold loose"),
}
VALUE_WORDS = {
    "colour=grey": ("grey", "gray"),
    "flavour=plain": ("plain", "unflavoured", "unflavored"),
    "packaging=bottle": ("bottle", "bottled"),
    "packaging=carton": ("carton", "cardboard", "box", "tetra pak"),
    "packaging=loose": ("loose", "unpackaged", "unpacked", "by weight", "per kilo", "by the kilo"),
}
# Countries as a product sheet may write them (English or Swedish) and as shoppers say them.
COUNTRIES = {
    "Sweden": ("sweden", "swedish", "sverige"), "Spain": ("spain", "spanish", "spanien"),
    "Italy": ("italy", "italian", "italien"), "Netherlands": ("netherlands", "the netherlands", "dutch", "holland"),
    "Denmark": ("denmark", "danish", "danmark"), "Finland": ("finland", "finnish"),
    "Poland": ("poland", "polish", "polen"), "Argentina": ("argentina", "argentinian", "argentine"),
    "Chile": ("chile", "chilean"), "China": ("china", "chinese", "kina"), "Ecuador": ("ecuador", "ecuadorian"),
    "Peru": ("peru", "peruvian"),
    "USA": ("usa", "america", "american", "united states", "the us", "the states", "us grown"),
    "Brazil": ("brazil", "brazilian", "brasilien"), "Colombia": ("colombia", "colombian"),
    "Costa Rica": ("costa rica", "costa rican"), "Israel": ("israel", "israeli"), "Mexico": ("mexico", "mexican"),
    "Germany": ("germany", "german", "tyskland"), "France": ("france", "french", "frankrike"),
    "South Africa": ("south africa", "south african", "sydafrika"), "New Zealand": ("new zealand",),
    "Morocco": ("morocco", "moroccan", "marocko"), "Egypt": ("egypt", "egyptian", "egypten"),
    "Greece": ("greece", "greek", "grekland"), "Portugal": ("portugal", "portuguese"),
    "India": ("india", "indian", "indien"), "Kenya": ("kenya", "kenyan"), "Norway": ("norway", "norwegian", "norge"),
    "Belgium": ("belgium", "belgian", "belgien"), "Thailand": ("thailand", "thai"),
    "Vietnam": ("vietnam", "vietnamese"), "Turkey": ("turkish", "turkiet"),
    "Dominican Republic": ("dominican republic",), "Honduras": ("honduras",), "Panama": ("panama",),
}
# An ingredient a shopper names -> stems to look for in a sheet's ingredients line (English and Swedish).
INGREDIENTS = {
    "milk": ("milk", "mjölk", "mjolk"), "oat": ("oat", "havre"), "soy": ("soy", "soja"), "soya": ("soy", "soja"),
    "sugar": ("sugar", "socker"), "water": ("water", "vatten"), "salt": ("salt",), "vanilla": ("vanil",),
    "strawberry": ("strawberr", "jordgubb"), "blueberry": ("blueberr", "blåbär"),
    "apple": ("apple", "äpple", "äppel", "eple", "æble"), "orange": ("orange", "apelsin", "appelsin"),
    "grapefruit": ("grapefruit", "grapefrukt", "röd grape", "rosa grape", "gul grape"), "mandarin": ("mandarin",),
    # a stem inside a word lists the ingredient (Swedish compounds), so never "druv": "druvsocker" is dextrose
    "grape": ("druvor", "druvjuice", "druvsaft", "druvmust", "vindruv", "grapes", "grape juice", "grape must"),
    "cream": ("cream", "grädde"), "starch": ("starch", "stärkelse"), "corn": ("corn", "majs"),
    "potato": ("potato", "potatis"), "rapeseed oil": ("rapeseed", "rapsolja"), "oil": ("oil", "olja"),
    "calcium": ("calcium", "kalcium"), "vitamin": ("vitamin",), "vitamin d": ("vitamin d", "d-vitamin", "d2"),
    "lactase": ("lactase", "laktas"), "pectin": ("pectin", "pektin"), "citric acid": ("citric", "citron"),
    "aroma": ("arom",), "flavouring": ("arom",), "gluten": ("gluten",), "wheat": ("wheat", "vete"),
    "egg": ("egg", "ägg"), "nut": ("nut", "nöt", "mandel", "almond", "hasselnöt"), "peanut": ("peanut", "jordnöt"),
    "gelatin": ("gelatin",), "gelatine": ("gelatin",), "pulp": ("pulp", "fruktkött"),
    "palm oil": ("palm oil", "palm fat", "palm kernel", "palmolja", "palmfett", "palmkärn"),  # not "palmitate"
    "concentrate": ("concentrat", "koncentrat"), "protein": ("protein",), "culture": ("cultur", "kultur"),
    "carrot": ("carrot", "morot"), "lactose": ("lactose", "laktos"),
}
INGREDIENT_CUES = ("contain", "contains", "containing", "ingredient", "ingredients", "made with", "made from",
                    "made of", "in it", "in this", "in there", "is there", "are there", "inside", "any", "traces",
                    "trace of", "include", "includes", "add", "added", "adds")
# Claims a shopper asks about that a catalogue table rarely records; unless a flag of the same words exists,
# they are handed off.
DIET_CLAIMS = ("gluten free", "gluten", "vegan", "vegetarian", "halal", "kosher", "nut free", "dairy free",
                "dairy", "keto", "allergy", "allergies", "allergen", "allergens", "allergic", "sugar free",
                "coeliac", "celiac", "gmo", "paleo", "diabetic", "fairtrade", "fair trade", "palm oil free",
                "lactose free", "organic", "halal certified", "plant based", "wheat free", "egg free")
