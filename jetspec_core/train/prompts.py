"""The offline training prompt set: code, math word problems and open instructions/chat.

Everything is generated here from templates and word lists, or drawn from text that Python
itself ships (signatures, docstrings and module docs of the standard library, read with `ast`,
never imported). Given the seed and the Python version the set is identical on every machine;
`python -m jetspec_core train prompts --out FILE` writes it so that the GPU machine reads the
same file. Evaluation prompts (HumanEval, MT-Bench) never enter: `build_prompts` drops any
prompt that defines a HumanEval entry point or shares an 8-word run with an MT-Bench question.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import JetSpecError


@dataclass(frozen=True)
class Prompt:
    kind: str   # code_stub | code_task | code_explain | math | reasoning | chat | writing | extraction
    text: str


# -- code: HumanEval-style stubs with doctests computed from a reference implementation ---------
# (name, signature, docstring, implementation, example arguments)
_STUBS = [
    ("count_vowels", "text: str) -> int", "Return how many vowels (a, e, i, o, u) the text contains.",
     lambda s: sum(c in "aeiou" for c in s.lower()), [("banana",), ("Rhythm",), ("AEIOU",)]),
    ("reverse_words", "sentence: str) -> str", "Return the sentence with the order of its words reversed.",
     lambda s: " ".join(s.split()[::-1]), [("hello big world",), ("one",)]),
    ("running_total", "values: List[int]) -> List[int]", "Return the list of running sums of values.",
     lambda v: [sum(v[:i + 1]) for i in range(len(v))], [([1, 2, 3, 4],), ([],), ([5, -5, 5],)]),
    ("is_palindrome_number", "n: int) -> bool", "Return True when the decimal digits of n read the same backwards.",
     lambda n: str(n) == str(n)[::-1], [(121,), (10,), (7,)]),
    ("second_largest", "values: List[int]) -> int",
     "Return the second largest distinct value of the list (the list has at least two distinct values).",
     lambda v: sorted(set(v))[-2], [([3, 1, 4, 1, 5],), ([10, 10, 9],)]),
    ("count_words", "text: str) -> Dict[str, int]", "Count how often each lower-cased word occurs in the text.",
     lambda s: {w: s.lower().split().count(w) for w in sorted(set(s.lower().split()))}, [("the cat the dog",)]),
    ("chunk_list", "items: List[int], size: int) -> List[List[int]]",
     "Split items into consecutive chunks of the given size; the last chunk may be shorter.",
     lambda v, n: [v[i:i + n] for i in range(0, len(v), n)], [([1, 2, 3, 4, 5], 2), ([], 3)]),
    ("digit_product", "n: int) -> int", "Return the product of the decimal digits of a positive integer n.",
     lambda n: eval("*".join(str(n))), [(234,), (9,), (101,)]),
    ("interleave", "a: List[int], b: List[int]) -> List[int]",
     "Interleave two lists, starting with a; leftover elements of the longer list go at the end.",
     lambda a, b: [x for p in zip(a, b) for x in p] + a[len(b):] + b[len(a):], [([1, 3, 5], [2, 4]), ([], [7])]),
    ("caesar_shift", "text: str, k: int) -> str",
     "Shift every lower-case letter of text k places forward in the alphabet, wrapping around; keep other characters.",
     lambda s, k: "".join(chr((ord(c) - 97 + k) % 26 + 97) if c.islower() else c for c in s), [("abc xyz", 2), ("hi!", 13)]),
    ("count_primes_below", "n: int) -> int", "Return how many prime numbers are smaller than n.",
     lambda n: sum(all(p % d for d in range(2, int(p ** 0.5) + 1)) for p in range(2, n)), [(10,), (2,), (30,)]),
    ("run_length_encode", "text: str) -> str",
     "Compress runs of equal characters as the character followed by the run length.",
     lambda s: "".join(f"{c}{len(m.group(0))}" for m in re.finditer(r"(.)\1*", s) for c in m.group(1)),
     [("aaabcc",), ("x",)]),
    ("max_subarray_sum", "values: List[int]) -> int",
     "Return the largest sum of a non-empty contiguous sub-list of values.",
     lambda v: max(sum(v[i:j]) for i in range(len(v)) for j in range(i + 1, len(v) + 1)), [([-2, 1, -3, 4, -1, 2, 1],), ([-3, -1],)]),
    ("to_binary", "n: int) -> str", "Return the binary representation of a non-negative integer without a prefix.",
     lambda n: bin(n)[2:], [(5,), (0,), (255,)]),
    ("capitalize_words", "text: str) -> str", "Upper-case the first letter of every word, lower-case the rest.",
     lambda s: " ".join(w[:1].upper() + w[1:].lower() for w in s.split(" ")), [("hello wORLD",), ("a b",)]),
    ("flatten_once", "nested: List[List[int]]) -> List[int]", "Flatten a list of lists by one level.",
     lambda v: [x for sub in v for x in sub], [([[1, 2], [3], []],)]),
    ("gcd_of_list", "values: List[int]) -> int", "Return the greatest common divisor of a non-empty list of positive integers.",
     lambda v: __import__("math").gcd(*v), [([12, 18, 24],), ([7, 13],)]),
    ("unique_in_order", "values: List[int]) -> List[int]", "Remove duplicates, keeping the first occurrence of each value.",
     lambda v: list(dict.fromkeys(v)), [([3, 1, 3, 2, 1],), ([],)]),
    ("rotate_left", "values: List[int], k: int) -> List[int]", "Rotate the list k places to the left.",
     lambda v, k: v[k % len(v):] + v[:k % len(v)] if v else [], [([1, 2, 3, 4, 5], 2), ([1, 2], 5)]),
    ("is_anagram", "a: str, b: str) -> bool", "Return True when a and b use exactly the same letters, ignoring case and spaces.",
     lambda a, b: sorted(a.replace(" ", "").lower()) == sorted(b.replace(" ", "").lower()), [("Listen", "Silent"), ("abc", "abd")]),
    ("longest_word", "sentence: str) -> str", "Return the longest word of the sentence; the first one wins a tie.",
     lambda s: max(s.split(), key=len), [("a quick brown fox",), ("to be or not",)]),
    ("sum_of_squares_of_odds", "values: List[int]) -> int", "Return the sum of the squares of the odd values.",
     lambda v: sum(x * x for x in v if x % 2), [([1, 2, 3],), ([2, 4],)]),
    ("matrix_transpose", "m: List[List[int]]) -> List[List[int]]", "Return the transpose of a rectangular matrix.",
     lambda m: [list(r) for r in zip(*m)], [([[1, 2, 3], [4, 5, 6]],)]),
    ("count_uppercase", "text: str) -> int", "Return the number of upper-case letters in text.",
     lambda s: sum(c.isupper() for c in s), [("Hello World",), ("abc",)]),
    ("pairwise_differences", "values: List[int]) -> List[int]", "Return the differences between neighbouring values.",
     lambda v: [b - a for a, b in zip(v, v[1:])], [([1, 4, 9, 16],), ([5],)]),
    ("clamp_values", "values: List[float], low: float, high: float) -> List[float]",
     "Clamp every value into the closed interval [low, high].",
     lambda v, lo, hi: [min(max(x, lo), hi) for x in v], [([-1.5, 0.5, 3.0], 0.0, 1.0)]),
    ("hamming_distance", "a: str, b: str) -> int", "Return the number of positions at which two equal-length strings differ.",
     lambda a, b: sum(x != y for x, y in zip(a, b)), [("karolin", "kathrin"), ("abc", "abc")]),
    ("collatz_steps", "n: int) -> int", "Return how many Collatz steps it takes for n to reach 1.",
     lambda n: (lambda f: f(f, n))(lambda f, m: 0 if m == 1 else 1 + f(f, m // 2 if m % 2 == 0 else 3 * m + 1)), [(6,), (1,), (7,)]),
    ("merge_sorted", "a: List[int], b: List[int]) -> List[int]", "Merge two sorted lists into one sorted list.",
     lambda a, b: sorted(a + b), [([1, 4, 7], [2, 3, 9]), ([], [1])]),
    ("roman_to_int", "numeral: str) -> int", "Convert a Roman numeral to an integer.",
     lambda s: sum((-1 if i + 1 < len(s) and {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}[c] <
                    {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}[s[i + 1]] else 1) *
                   {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}[c] for i, c in enumerate(s)),
     [("XIV",), ("MCMXC",)]),
    ("even_index_sum", "values: List[int]) -> int", "Return the sum of the values at even indices.",
     lambda v: sum(v[::2]), [([1, 2, 3, 4, 5],), ([],)]),
    ("nth_triangular", "n: int) -> int", "Return the n-th triangular number 1 + 2 + ... + n.",
     lambda n: n * (n + 1) // 2, [(1,), (4,), (10,)]),
    ("strip_vowels", "text: str) -> str", "Remove all vowels from text, keeping everything else in order.",
     lambda s: "".join(c for c in s if c.lower() not in "aeiou"), [("programming",), ("AEIx",)]),
    ("group_by_length", "words: List[str]) -> Dict[int, List[str]]", "Group words by their length, keeping input order.",
     lambda w: {n: [x for x in w if len(x) == n] for n in sorted({len(x) for x in w})}, [(["a", "bb", "c", "dd", "eee"],)]),
    ("balanced_brackets", "text: str) -> bool", "Return True when every '[' in text is closed by a later matching ']'.",
     lambda s: (lambda d: all(x >= 0 for x in d) and (not d or d[-1] == 0))(
         [sum(1 if c == "[" else -1 for c in s[:i + 1] if c in "[]") for i in range(len(s))]), [("[[]]",), ("][",), ("[a]b",)]),
    ("celsius_table", "start: int, stop: int, step: int) -> List[Tuple[int, float]]",
     "Return (celsius, fahrenheit) pairs for celsius from start up to but excluding stop.",
     lambda a, b, s: [(c, c * 9 / 5 + 32) for c in range(a, b, s)], [(0, 30, 10)]),
    ("dedupe_sorted_words", "text: str) -> List[str]", "Return the distinct words of text in alphabetical order.",
     lambda s: sorted(set(s.split())), [("b a c a b",)]),
    ("mean_absolute_error", "pred: List[float], true: List[float]) -> float",
     "Return the mean absolute difference between two equal-length lists.",
     lambda p, t: sum(abs(a - b) for a, b in zip(p, t)) / len(p), [([1.0, 2.0, 4.0], [1.0, 3.0, 2.0])]),
    ("first_repeated_char", "text: str) -> str", "Return the first character that occurs a second time, or '' if none does.",
     lambda s: next((c for i, c in enumerate(s) if c in s[:i]), ""), [("abcab",), ("xyz",)]),
    ("window_max", "values: List[int], k: int) -> List[int]", "Return the maximum of every window of k consecutive values.",
     lambda v, k: [max(v[i:i + k]) for i in range(len(v) - k + 1)], [([1, 3, 2, 5, 4], 2)]),
    ("digits_to_words", "n: int) -> str", "Spell out each decimal digit of n as an English word, separated by spaces.",
     lambda n: " ".join("zero one two three four five six seven eight nine".split()[int(d)] for d in str(n)), [(407,)]),
    ("count_islands_1d", "cells: str) -> int", "Count maximal runs of '#' characters in a row of cells.",
     lambda s: len([r for r in s.split(".") if r]), [("##..#.###",), ("....",)]),
    ("leap_years_between", "start: int, end: int) -> List[int]", "Return the leap years from start to end inclusive.",
     lambda a, b: [y for y in range(a, b + 1) if y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)], [(1896, 1912)]),
    ("alternate_case", "text: str) -> str", "Upper-case the characters at even positions and lower-case the others.",
     lambda s: "".join(c.upper() if i % 2 == 0 else c.lower() for i, c in enumerate(s)), [("python",)]),
    ("weighted_average", "values: List[float], weights: List[float]) -> float",
     "Return the weighted average of values with the given non-negative weights.",
     lambda v, w: sum(a * b for a, b in zip(v, w)) / sum(w), [([1.0, 2.0, 3.0], [3.0, 1.0, 0.0])]),
]

_TASKS = [
    "checks whether a string is a valid IPv4 address", "returns the n-th Fibonacci number iteratively",
    "finds the most common element of a list", "converts a camelCase name to snake_case",
    "parses a CSV line that may contain quoted fields", "computes the median of a list of numbers",
    "returns all permutations of a short string", "validates that an e-mail address has one @ and a dot after it",
    "computes the factorial of n with memoisation", "reads a text file and counts its lines, words and characters",
    "removes duplicate rows from a list of dictionaries", "computes the dot product of two vectors",
    "finds all pairs in a list that sum to a target value", "checks whether a year is a leap year",
    "converts a number of seconds into hours, minutes and seconds", "returns the prime factors of an integer",
    "merges two dictionaries, summing the values of shared keys", "implements binary search on a sorted list",
    "implements bubble sort and returns the number of swaps", "detects a cycle in a linked list",
    "implements a stack with push, pop and peek", "implements a queue with two stacks",
    "computes the edit distance between two strings", "finds the longest common prefix of a list of strings",
    "checks whether parentheses, brackets and braces are balanced", "rotates a square matrix by 90 degrees",
    "returns the transpose of a matrix", "generates Pascal's triangle up to n rows",
    "converts an integer to a Roman numeral", "counts the frequency of each character in a string",
    "flattens an arbitrarily nested list", "computes the greatest common divisor and least common multiple",
    "returns the k largest numbers of a list using a heap", "implements an LRU cache of fixed capacity",
    "tokenises an arithmetic expression into numbers and operators", "evaluates a postfix expression",
    "checks whether a Sudoku row, column and box are valid", "finds the shortest path in an unweighted graph with BFS",
    "performs a depth-first traversal of a tree", "computes the height of a binary tree",
    "inserts a value into a binary search tree", "serialises a binary tree to a list and back",
    "implements quicksort", "implements merge sort", "counts the inversions in a list",
    "finds the missing number in a list containing 1..n", "returns the intersection of two lists without duplicates",
    "groups anagrams from a list of words", "compresses a string with run-length encoding and decodes it again",
    "computes the moving average of a list with a given window", "normalises a list of numbers to the range 0..1",
    "splits a sentence into words and strips punctuation", "checks whether two rectangles overlap",
    "computes the area of a polygon from its vertices", "converts a temperature between Celsius and Fahrenheit",
    "generates all subsets of a set", "solves the Tower of Hanoi and prints the moves",
    "finds the majority element of a list if there is one", "computes compound interest over several years",
    "parses a date string in YYYY-MM-DD format and returns the weekday", "returns the longest increasing subsequence",
    "implements the sieve of Eratosthenes", "computes the sum of the digits of a number until one digit remains",
    "shuffles a list in place with the Fisher-Yates algorithm", "counts the number of islands in a grid of 0s and 1s",
    "converts a list of tuples into a dictionary of lists", "returns the words of a text sorted by frequency",
    "checks whether a number is a perfect square without using sqrt", "computes the power set size and lists it",
    "removes all comments from a Python source string", "pretty-prints a nested dictionary with indentation",
    "implements a simple tokenizer for a key=value config file", "retries a function call up to three times",
    "measures how long a function takes to run", "implements a priority queue with heapq",
    "reads JSON from a file and writes a summary", "validates a password against length and character rules",
    "finds the first non-repeating character of a string", "implements matrix multiplication without numpy",
    "generates a random password of a given length", "finds the kth smallest element with quickselect",
    "checks whether a graph is bipartite", "implements Dijkstra's shortest path algorithm",
    "implements a trie with insert and search", "computes the number of ways to climb n stairs with steps of 1 or 2",
    "solves the coin change problem for the fewest coins", "implements a simple bank account class",
    "implements a class for 2D vectors with addition and length", "counts the vowels and consonants in a string",
    "checks whether a sentence is a pangram", "converts a Roman numeral to an integer",
    "zips two lists into a list of pairs without using zip", "rounds a float to a given number of significant figures",
    "returns the day of the year for a given date", "finds duplicate files by comparing their hashes",
    "implements a countdown timer that prints each second", "builds a histogram of word lengths",
]

_LANGS = ["Python"] * 6 + ["JavaScript", "C", "C++", "Java", "Go", "Rust", "TypeScript", "Bash"]

_CODE_TEMPLATES = [
    "Write a {lang} function that {task}.",
    "Write a {lang} function that {task}. Include a short docstring or comment.",
    "Implement a {lang} function that {task}, and show an example call.",
    "Please write {lang} code that {task}.",
    "I need a {lang} function that {task}. Explain how it works briefly.",
    "Write a {lang} program that {task}, with comments.",
    "Show me how to write a function in {lang} that {task}.",
    "Write a well-tested {lang} function that {task}. Add a couple of test cases.",
]

_SQL = [
    "Write an SQL query that returns the ten customers with the highest total order value.",
    "Write an SQL query that counts the employees in each department, largest first.",
    "Write an SQL query that finds products that have never been ordered.",
    "Write an SQL table definition for a library with books, members and loans.",
    "Write an SQL query that returns the average salary per job title, rounded to two decimals.",
    "Write an SQL query that lists the orders placed in the last 30 days together with the customer name.",
    "Explain the difference between INNER JOIN and LEFT JOIN with an example query.",
    "Write an SQL query that finds duplicate e-mail addresses in a users table.",
]

# -- math word problems --------------------------------------------------------------------------
_NAMES = ["Alice", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Keiko",
          "Liam", "Maya", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Victor",
          "Wen", "Yusuf", "Zoe"]
_ITEMS = ["apples", "marbles", "stickers", "pencils", "cookies", "books", "stamps", "cards", "shells",
          "balloons", "coins", "oranges", "candles", "toy cars", "flowers", "eggs"]


def _math(r: random.Random) -> str:
    n1, n2 = r.sample(_NAMES, 2)
    it = r.choice(_ITEMS)
    a, b, c = r.randint(12, 90), r.randint(3, 40), r.randint(2, 11)
    price, pct = r.choice([0.25, 0.5, 0.75, 1.2, 1.5, 2.5, 3.0, 4.75, 12.0]), r.choice([10, 15, 20, 25, 30, 40])
    speed, hours = r.randint(30, 110), r.randint(2, 9)
    w, h = r.randint(3, 40), r.randint(3, 40)
    forms = [
        f"{n1} has {a} {it}. {n1} gives {b} to {n2} and then buys {c} more. How many {it} does {n1} have now?",
        f"A shop sells {it} for ${price:.2f} each. {n1} buys {a} of them and pays with a ${a * price // 10 * 10 + 20:.0f} note. "
        "How much change does {n1} get?".replace("{n1}", n1),
        f"{n1} reads {c} pages every day. The book has {a * c + b} pages. How many days does it take to finish it?",
        f"A train travels at {speed} km/h for {hours} hours and then at {speed - 10} km/h for {c} hours. "
        "How far does it travel in total?",
        f"A rectangle is {w} cm wide and {h} cm long. What are its area and its perimeter?",
        f"A jacket costs ${a * 2}. It is on sale for {pct}% off. What is the sale price?",
        f"{n1} is {c} years older than {n2}. In {b % 10 + 2} years their ages will add up to {2 * a}. How old is each now?",
        f"The average of {c} numbers is {a}. One number, {b}, is removed. What is the average of the remaining numbers?",
        f"Solve for x: {c}x + {b} = {a * c + b}. Show each step.",
        f"What is {a} times {b}? Explain step by step.",
        f"What is {a * c} divided by {c}, plus {b}?",
        f"{n1} saves ${b} every week. How many weeks does it take to save ${a * b}?",
        f"A recipe needs {c} eggs for {b % 6 + 2} people. How many eggs are needed for {(b % 6 + 2) * 3} people?",
        f"A tank holds {a * 10} litres and drains at {c * 2} litres per minute. How long until it is empty?",
        f"{n1} invests ${a * 100} at {pct % 9 + 2}% simple interest per year. How much interest is earned in {c} years?",
        f"There are {a} students in a class and {pct}% of them walk to school. How many students walk?",
        f"A pizza is cut into {c + 1} equal slices. {n1} eats {c // 2} slices and {n2} eats 2. What fraction is left?",
        f"What is the least common multiple of {c} and {b}? And the greatest common divisor?",
        f"Convert {a * 100} metres into kilometres and into centimetres.",
        f"If a car uses {c} litres of fuel per 100 km, how much fuel does it need for {a * 10} km?",
        f"{n1} starts work at 8:{b % 60:02d} and works for {hours} hours and {c * 5} minutes. When does {n1} finish?",
        f"A box contains {a} red and {b} blue {it}. One is drawn at random. What is the probability it is blue?",
        f"The sum of three consecutive integers is {3 * a + 3}. What are the integers?",
        f"A square has a perimeter of {4 * w} cm. What is its area?",
        f"{n1} scored {a}, {b + 50}, and {c * 8} in three tests. What score is needed in the fourth test to average {a % 20 + 70}?",
        f"Compute {a}% of {b * 20}, then add {c}. Show your work.",
        f"A farmer has {a} chickens and {b} cows. How many legs do the animals have altogether?",
        f"Expand and simplify ({c}x + {b % 9 + 1})({c % 5 + 1}x - {b % 7 + 2}).",
        f"Find the value of {c}^{(b % 4) + 2}. Explain how you calculated it.",
        f"A bag of {it} weighs {price:.2f} kg. How much do {a} bags weigh?",
    ]
    return r.choice(forms)


def _reasoning(r: random.Random) -> str:
    n = r.sample(_NAMES, 4)
    start, step = r.randint(1, 12), r.randint(2, 7)
    forms = [
        f"{n[0]} is taller than {n[1]}, and {n[1]} is taller than {n[2]}. Is {n[2]} taller than {n[0]}? Explain.",
        f"What is the next number in the sequence {start}, {start + step}, {start + 2 * step}, {start + 3 * step}, ...? Why?",
        f"What is the next number: {start}, {start * 2}, {start * 4}, {start * 8}, ...?",
        f"If today is {r.choice(['Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday', 'Sunday'])}, "
        f"what day of the week will it be in {r.randint(3, 100)} days?",
        f"All {r.choice(['bloops', 'glerks', 'zibs'])} are {r.choice(['razzies', 'plons', 'murks'])}. Some razzies are "
        "blue. Can we conclude that some bloops are blue? Explain your reasoning.",
        f"{n[0]}, {n[1]} and {n[2]} each own a different pet: a cat, a dog and a fish. {n[0]} does not own the dog. "
        f"{n[1]} owns the fish. Who owns which pet?",
        f"A bat and a ball cost ${step + 0.1:.2f} in total. The bat costs ${step:.2f} more than the ball. How much does the ball cost?",
        f"There are {start + 3} people in a room and each shakes hands with every other person once. How many handshakes are there?",
        f"{n[0]} is facing north, turns right, turns right again, then turns left. Which direction is {n[0]} facing?",
        f"If it takes {step} machines {step} minutes to make {step} widgets, how long would {step * 10} machines take to "
        f"make {step * 10} widgets?",
        f"{n[0]} has twice as many coins as {n[1]}. Together they have {3 * (start + 5)} coins. How many does each have?",
        f"In a race, {n[0]} finished ahead of {n[1]} but behind {n[2]}. {n[3]} finished last. Who won?",
        "Is the statement 'every prime number is odd' true? Justify your answer.",
        f"A clock shows {start % 12 + 1}:{step * 5:02d}. What is the angle between the hour and minute hands?",
    ]
    return r.choice(forms)


# -- open instructions / chat across many topics ------------------------------------------------
_TOPICS = [
    "photosynthesis", "black holes", "the water cycle", "plate tectonics", "the French Revolution",
    "the Roman Empire", "machine learning", "blockchain", "climate change", "vaccines", "the immune system",
    "renewable energy", "the stock market", "inflation", "supply and demand", "the Renaissance",
    "quantum computing", "the human heart", "DNA replication", "volcanoes", "the Silk Road", "jazz music",
    "impressionist painting", "the Olympic Games", "urban gardening", "meditation", "sleep hygiene",
    "time management", "public speaking", "the internet", "cryptography", "electric cars", "honeybees",
    "coral reefs", "the moon landing", "ancient Egypt", "the printing press", "antibiotics", "recycling",
    "the periodic table", "gravity", "the theory of evolution", "the Great Wall of China", "coffee",
    "tea ceremonies", "marathon training", "chess openings", "budgeting", "remote work", "social media",
    "artificial intelligence ethics", "3D printing", "solar panels", "rainforests", "deserts", "glaciers",
    "the human brain", "memory and learning", "learning a new language", "Shakespeare", "poetry",
    "the Industrial Revolution", "democracy", "the United Nations", "cloud computing", "open-source software",
    "databases", "operating systems", "computer networks", "the history of mathematics", "prime numbers",
    "probability", "statistics", "nutrition", "vegetarian cooking", "bread baking", "wine making",
    "photography", "film editing", "video games", "board games", "architecture", "bridges", "volunteering",
    "minimalism", "space exploration", "Mars", "the solar system", "earthquakes", "hurricanes", "tides",
    "electricity", "magnetism", "light and optics", "sound waves", "nuclear energy", "batteries",
    "the economy of Japan", "Greek mythology", "the Vikings", "the Maya civilisation", "origami",
    "knitting", "camping", "hiking safety", "first aid", "dog training", "cat behaviour", "bird migration",
    "ocean currents", "the carbon cycle", "soil health", "composting", "beekeeping", "urban planning",
    "public transport", "cybersecurity", "password managers", "version control with git", "unit testing",
    "functional programming", "object-oriented design", "recursion", "sorting algorithms", "big-O notation",
    "the French language", "the Spanish language", "Japanese calligraphy", "classical music", "hip hop",
    "the history of the bicycle", "aviation", "sailing", "mountain climbing", "yoga", "running shoes",
    "job interviews", "writing a resume", "starting a small business", "negotiation", "leadership",
    "teamwork", "conflict resolution", "customer service", "marketing", "branding", "e-commerce",
]
_TOPICS += [  # STEM and humanities, the two open-question categories of chat benchmarks
    "entropy", "the Doppler effect", "superconductors", "enzymes", "the Krebs cycle", "stem cells",
    "neural networks", "the speed of light", "special relativity", "Newton's laws of motion", "friction",
    "chemical bonds", "acids and bases", "catalysts", "polymers", "semiconductors", "transistors",
    "the greenhouse effect", "ocean acidification", "biodiversity", "food chains", "photosynthesis versus respiration",
    "the Fibonacci sequence", "calculus", "linear algebra", "game theory", "graph theory", "cryptocurrency mining",
    "GPS satellites", "radio waves", "lasers", "MRI scanners", "the placebo effect", "epidemiology",
    "the Cold War", "the Enlightenment", "the Reformation", "colonialism", "the Ottoman Empire", "the Meiji era",
    "Confucianism", "stoicism", "existentialism", "utilitarianism", "the social contract", "human rights",
    "the separation of powers", "federalism", "behavioural economics", "globalisation", "minimum wage laws",
    "monetary policy", "universal basic income", "Baroque music", "the Harlem Renaissance", "modern dance",
    "Greek tragedy", "the novel as a literary form", "propaganda", "censorship", "the history of writing",
    "museums", "archaeology", "linguistics", "dialects", "bilingualism", "child development", "cognitive biases",
    "motivation", "habits", "procrastination", "urban heat islands", "water scarcity", "famine relief",
]
_ACTIVITIES = [
    "learning to play the guitar", "planting a vegetable garden", "preparing for an exam", "training for a 5 km run",
    "saving money for a holiday", "organising a small wedding", "moving to a new city", "starting a podcast",
    "learning to cook", "writing a novel", "getting better sleep", "reducing screen time", "making new friends",
    "learning to code", "planning a road trip", "keeping a houseplant alive", "hosting a dinner party",
    "studying for a driving test", "decluttering a flat", "speaking confidently in meetings",
]
_ROLES = [
    "a ship's captain", "a medieval knight", "a friendly robot", "a tour guide in Rome", "a detective",
    "a chef in a busy kitchen", "a museum curator", "a personal trainer", "a librarian", "a science teacher",
    "an astronaut on the space station", "a pirate", "a wise old wizard", "a sports commentator",
    "a travel agent", "a customer support agent", "a park ranger", "a 1920s journalist",
]
_PAIRS = [
    ("cats", "dogs"), ("Python", "JavaScript"), ("tea", "coffee"), ("trains", "planes"), ("books", "films"),
    ("renting", "buying a home"), ("solar power", "wind power"), ("city life", "country life"),
    ("SQL databases", "NoSQL databases"), ("e-books", "paper books"), ("running", "swimming"),
    ("capitalism", "socialism"), ("summer", "winter"), ("TCP", "UDP"), ("lists", "tuples in Python"),
    ("democracy", "monarchy"), ("working from home", "working in an office"), ("mitosis", "meiosis"),
]
_CHAT_TEMPLATES = [
    "Explain {topic} in simple terms.", "What is {topic}? Give a short overview.",
    "Explain {topic} to a ten-year-old.", "What are the most important facts about {topic}?",
    "Give me five interesting facts about {topic}.", "Summarize the key ideas of {topic} in three bullet points.",
    "What are common misconceptions about {topic}?", "Why does {topic} matter today?",
    "Write a short quiz with three questions about {topic}, with answers.",
    "What are the pros and cons of {topic}?", "Describe the history of {topic} briefly.",
    "How would you teach {topic} to a beginner?", "Write a short paragraph about {topic}.",
    "What should everyone know about {topic}?", "List the main terms someone learning {topic} should know.",
    "Give me tips for {activity}.", "Give me a step-by-step plan for {activity}.",
    "What mistakes should I avoid when {activity}?", "I want to get started with {activity}. Where do I begin?",
    "Compare {a} and {b}.", "What are the main differences between {a} and {b}?",
    "Which is better, {a} or {b}? Give arguments for both.",
    "Pretend you are {role}. Describe a typical day.", "Act as {role} and greet a visitor.",
    "You are {role}. Answer this question in character: what is the hardest part of your job?",
    "Imagine you are {role}. How would you explain {topic} to someone you meet?",
    "Stay in character as {role} and give advice to someone {activity}.",
    "How does {topic} work? Explain the mechanism step by step.",
    "What are the causes and consequences of {topic}?", "How has {topic} changed over the last century?",
    "Describe an experiment or example that illustrates {topic}.", "What open questions remain about {topic}?",
    "How is {topic} related to everyday life? Give three examples.", "Explain {topic} using an analogy.",
    "What would happen if {topic} did not exist? Discuss.", "Write a short essay outline on {topic}.",
    "A friend says {topic} is overrated. How would you respond?",
    "Evaluate the argument that {a} are better than {b}. Consider both sides.",
    "Give a balanced overview of {topic} for a newspaper reader.",
    "What are the ethical questions raised by {topic}?", "Explain the main schools of thought on {topic}.",
]
_WRITING_TEMPLATES = [
    "Write a short poem about {topic}.", "Write a haiku about {topic}.", "Write a limerick about {topic}.",
    "Write a short story about {role} who discovers {topic}.", "Write a blog post introduction about {topic}.",
    "Write a persuasive paragraph arguing that everyone should learn about {topic}.",
    "Write a product description for a new gadget related to {topic}.", "Write a tweet announcing a talk on {topic}.",
    "Draft a polite e-mail to a colleague asking for feedback on a report about {topic}.",
    "Write a short speech for a school assembly about {topic}.", "Write a dialogue between {role} and a child about {topic}.",
    "Write a diary entry from the point of view of {role}.", "Write a motivational message for someone {activity}.",
    "Write a cover letter opening for a job related to {topic}.", "Write a short news report about a breakthrough in {topic}.",
    "Write a review of an imaginary book about {topic}.", "Write a thank-you note to a teacher who taught me about {topic}.",
    "Write a funny story about {role} and {topic}.", "Write an advertisement slogan and a short pitch for a {topic} course.",
]
_EXTRACT_TEMPLATES = [
    "Summarize the following text in two sentences:\n\n{text}",
    "Extract the key points of this text as a bulleted list:\n\n{text}",
    "What is the main purpose described in this passage?\n\n{text}",
    "Rewrite the following text in plain, simple English:\n\n{text}",
    "List every technical term that appears in this text and explain each briefly:\n\n{text}",
    "Give this text a short title and a one-sentence summary:\n\n{text}",
]

# -- structured extraction over generated records (people, companies, products, events) ------------
_LAST = ["Abara", "Berg", "Costa", "Dubois", "Eriksen", "Fischer", "Gupta", "Haddad", "Ito", "Jansen", "Kowalski",
         "Lindqvist", "Moreau", "Nakamura", "Okafor", "Petrov", "Quispe", "Rossi", "Silva", "Tanaka", "Usman",
         "Varga", "Weber", "Xu", "Yilmaz", "Zhou"]
_CITIES = ["Lisbon", "Nairobi", "Osaka", "Toronto", "Krakow", "Lima", "Hanoi", "Tbilisi", "Bergen", "Cebu",
           "Accra", "Porto", "Quito", "Tartu", "Leeds", "Adelaide", "Chennai", "Valencia", "Graz", "Tucson"]
_FIELDS = ["robotics", "organic farming", "battery recycling", "online education", "freight logistics",
           "medical imaging", "game design", "water purification", "textile dyeing", "urban cycling",
           "payment software", "wind turbines", "coffee roasting", "satellite mapping", "language apps"]
_ITEMS = ["backpack", "desk lamp", "kettle", "bicycle helmet", "headphones", "rain jacket", "blender",
          "office chair", "tent", "monitor", "sewing machine", "air purifier", "hiking boots", "camera"]
_SOURCES = ["a local newsletter", "an annual report", "a product catalogue", "a conference programme",
            "a club bulletin", "a museum guide", "a supplier email", "a city council memo"]


def _record_text(r: random.Random, kind: str) -> tuple[str, list[str]]:
    """One generated record rendered as prose, and the field names it mentions."""
    name = f"{r.choice(_NAMES)} {r.choice(_LAST)}"
    year, city = r.randint(1975, 2024), r.choice(_CITIES)
    if kind == "person":
        age, field = r.randint(21, 78), r.choice(_FIELDS)
        text = r.choice([
            f"{name}, {age}, moved to {city} in {year} and has worked in {field} ever since.",
            f"Born in {year - age + r.randint(18, 30)}, {name} started a career in {field} in {city} in {year}.",
            f"In {year}, {name} (age {age} today) opened a small {field} studio in {city}.",
        ])
        return text, ["name", "age", "city", "field", "year"]
    if kind == "company":
        co = f"{r.choice(_LAST)} {r.choice(['Labs', 'Works', 'Group', 'Systems', 'Partners', 'Co.'])}"
        staff, rev, field = r.randint(4, 9000), round(r.uniform(0.2, 950.0), 1), r.choice(_FIELDS)
        text = r.choice([
            f"{co}, founded in {city} in {year} by {name}, works in {field} and employs {staff} people; "
            f"its revenue last year was {rev} million dollars.",
            f"Based in {city}, {co} ({staff} employees, led by {name} since {year}) reported {rev} million "
            f"dollars in revenue."])
        return text, ["company", "city", "founder or leader", "employees", "revenue", "year"]
    if kind == "product":
        item, price, rating = r.choice(_ITEMS), round(r.uniform(9, 899), 2), round(r.uniform(1.5, 5.0), 1)
        text = r.choice([
            f"The {item} sold by {name}'s shop in {city} costs ${price} and has an average rating of {rating} out of 5.",
            f"A reviewer in {city} gave the {item} {rating} stars; it was bought for ${price} in {year}.",
        ])
        return text, ["product", "price", "rating", "city"]
    month, day = r.choice(["January", "March", "May", "July", "September", "November"]), r.randint(1, 28)
    people = r.randint(12, 4000)
    text = r.choice([
        f"On {month} {day}, {year}, {name} hosted a {r.choice(_FIELDS)} meetup in {city} attended by {people} people.",
        f"The {r.choice(_FIELDS)} festival in {city} ({month} {day}, {year}) drew {people} visitors; {name} organised it.",
    ])
    return text, ["event", "date", "city", "organiser", "attendance"]


_EXTRACT_ASKS = [
    "From the text below, extract {fields} for every entry and output them as a JSON list of objects.",
    "Read the passage and produce a CSV table with the columns {fields}, one row per entry.",
    "Pull out {fields} from each entry below and present them as a Markdown table.",
    "List {fields} for each entry in the text, one entry per line, as 'field: value' pairs.",
    "Turn the following notes into YAML: one item per entry with the keys {fields}.",
]
_QUESTION_ASKS = [
    "Using only the text below, which entry has the {extreme} {quantity}? Explain how you decided.",
    "Sort the entries in the text below by {quantity}, from {order}, and show the sorted list.",
    "Find every number in the text below, say what each one measures, and give their total where it makes sense.",
    "Name all the people, places and organisations mentioned below, grouped by type, as JSON.",
    "Check the text below for entries that are missing information and say what is missing.",
]


def _extraction(r: random.Random, n: int) -> list[Prompt]:
    """Structured-extraction prompts over generated records: fields to JSON / CSV / tables /
    YAML, comparisons, sorting, entities. The records are random, so every prompt is new."""
    out = []
    quantities = {"person": "age", "company": "revenue", "product": "price", "event": "attendance"}
    for _ in range(n):
        kind = r.choice(list(quantities))
        texts, fields = [], []
        for _ in range(r.randint(2, 5)):
            t, fields = _record_text(r, kind)
            texts.append(t)
        body = ("\n".join(f"{i + 1}. {t}" for i, t in enumerate(texts)) if r.random() < 0.5 else " ".join(texts))
        intro = f"(Text taken from {r.choice(_SOURCES)}.)\n\n" if r.random() < 0.3 else ""
        if r.random() < 0.6:
            ask = r.choice(_EXTRACT_ASKS).format(fields=", ".join(r.sample(fields, r.randint(2, len(fields)))))
        else:
            ask = r.choice(_QUESTION_ASKS).format(extreme=r.choice(["highest", "lowest"]), quantity=quantities[kind],
                                                  order=r.choice(["lowest to highest", "highest to lowest"]))
        out.append(Prompt("extraction", f"{ask}\n\n{intro}{body}"))
    return out


# Standard-library modules whose functions, docstrings and module docs are drawn from.
_STDLIB = [
    "textwrap", "string", "fractions", "heapq", "bisect", "colorsys", "calendar", "shlex", "fnmatch",
    "glob", "posixpath", "ntpath", "difflib", "base64", "html", "urllib.parse", "ipaddress",
    "email.utils", "random", "functools", "collections", "dataclasses", "inspect", "ast", "tokenize",
    "zipfile", "tarfile", "pathlib", "shutil", "os", "copy", "pprint", "reprlib", "graphlib", "enum",
    "_pydecimal", "datetime", "locale", "gettext", "wave", "quopri", "mimetypes", "platform",
    "pickletools", "dis", "cmd", "codecs", "argparse", "configparser", "typing", "contextlib", "secrets",
    "uuid", "timeit", "trace", "statistics", "csv", "json.decoder", "json.encoder", "smtplib", "ftplib",
    "http.cookies", "urllib.request", "imaplib", "mailbox", "netrc", "plistlib", "sched", "selectors",
    "socketserver", "stringprep", "symtable", "tempfile", "threading", "queue", "weakref", "zipimport",
    "operator", "numbers", "hashlib", "hmac", "getopt", "optparse", "gzip", "bz2", "lzma", "linecache",
    "filecmp", "sysconfig", "warnings", "traceback", "keyword", "token", "pydoc", "doctest", "unittest.case",
    "logging", "logging.handlers", "xml.dom.minidom", "xml.etree.ElementTree", "http.client", "nntplib",
    "concurrent.futures._base", "asyncio.tasks", "asyncio.queues", "email.message", "email.header",
]


def _stdlib_sources() -> list[tuple[str, str]]:
    out = []
    for name in _STDLIB:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue
        out.append((name, Path(spec.origin).read_text(encoding="utf-8", errors="replace")))
    return out


def _stub(fn: ast.FunctionDef, doc: str, opening: str = "") -> str:
    """`def name(args) -> ret:` and the docstring indented under it, `opening` right after the quotes."""
    sig = f"def {fn.name}({ast.unparse(fn.args)})"
    if fn.returns is not None:
        sig += f" -> {ast.unparse(fn.returns)}"
    body = "\n".join("    " + ln if ln else "" for ln in doc.splitlines())
    return f'{sig}:\n    """{opening}{body.strip()}\n    """\n'


def _stub_from_def(fn: ast.FunctionDef, src_lines: list[str]) -> tuple[str, str] | None:
    doc = ast.get_docstring(fn, clean=True)
    if not doc or len(doc) < 60 or len(doc) > 900 or fn.name.startswith("_"):
        return None
    src = "\n".join(src_lines[fn.lineno - 1:fn.end_lineno])
    return _stub(fn, doc), src


def _humaneval_style(module: str, fn: ast.FunctionDef, r: random.Random) -> str:
    """A module-level function as a completion stub in the layout of HumanEval-like tasks: an
    import header, two blank lines, the signature and a docstring that opens with a space (the
    target tends to repeat such stubs before completing them, so the head learns to copy)."""
    header = r.choice(["from typing import List, Optional\n\n\n", f"import {module}\n\n\n",
                       "from typing import Any, Dict, List\n\n\n", ""])
    return header + _stub(fn, ast.get_docstring(fn, clean=True), opening=" ")


def _stdlib_prompts(r: random.Random) -> list[Prompt]:
    stubs, explains, extracts = [], [], []
    for name, text in _stdlib_sources():
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        lines = text.splitlines()
        top_level = {n for n in tree.body if isinstance(n, ast.FunctionDef)}
        mdoc = ast.get_docstring(tree, clean=True) or ""
        for para in re.split(r"\n\s*\n", mdoc):
            para = " ".join(para.split())
            if 200 <= len(para) <= 1500:
                extracts.append(Prompt("extraction", r.choice(_EXTRACT_TEMPLATES).format(text=para)))
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef):
                continue
            made = _stub_from_def(node, lines)
            if made is None:
                continue
            stub, src = made
            stubs.append(Prompt("code_stub", stub))
            if node in top_level:
                stubs.append(Prompt("code_stub", _humaneval_style(name, node, r)))
            if 4 <= src.count("\n") <= 30 and len(src) < 1800:
                explains.append(Prompt("code_explain", r.choice([
                    "Explain what this Python function does:\n\n```python\n{src}\n```",
                    "Review this Python code and suggest improvements:\n\n```python\n{src}\n```",
                    "Write unit tests for this function:\n\n```python\n{src}\n```",
                    "Add type hints and comments to this function:\n\n```python\n{src}\n```",
                ]).format(src=src)))
    return stubs + explains + extracts


def _own_stubs(r: random.Random) -> list[Prompt]:
    out = []
    for name, sig, doc, fn, examples in _STUBS:
        lines = [doc]
        for args in examples:
            lines.append(f">>> {name}({', '.join(repr(a) for a in args)})")
            lines.append(repr(fn(*args)))
        body = "\n    ".join(lines)
        header = "from typing import Dict, List, Tuple\n\n\n"
        out.append(Prompt("code_stub", f'{header}def {name}({sig}:\n    """ {body}\n    """\n'))
        out.append(Prompt("code_task", f"Write a Python function `{name}({sig}` that does the following: "
                                       f"{doc[0].lower()}{doc[1:]}"))
    return out


def _templated(r: random.Random, n: int) -> list[Prompt]:
    out = []
    for _ in range(n):
        u = r.random()
        if u < 0.22:
            t = r.choice(_CODE_TEMPLATES).format(lang=r.choice(_LANGS), task=r.choice(_TASKS))
            out.append(Prompt("code_task", t))
        elif u < 0.24:
            out.append(Prompt("code_task", r.choice(_SQL)))
        elif u < 0.44:
            out.append(Prompt("math", _math(r)))
        elif u < 0.52:
            out.append(Prompt("reasoning", _reasoning(r)))
        else:
            a, b = r.choice(_PAIRS)
            fill = dict(topic=r.choice(_TOPICS), activity=r.choice(_ACTIVITIES), role=r.choice(_ROLES), a=a, b=b)
            kind = "chat" if u < 0.8 else "writing"
            t = r.choice(_CHAT_TEMPLATES if kind == "chat" else _WRITING_TEMPLATES).format(**fill)
            out.append(Prompt(kind, t))
    return out


def _shingles(text: str, n: int = 8) -> set[str]:
    w = re.findall(r"[a-z0-9']+", text.lower())
    return {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}


def evaluation_guard() -> tuple[set[str], set[str]]:
    """(HumanEval entry points, 8-word shingles of MT-Bench questions) from the installed data."""
    from ..bench.datasets import load_dataset

    entry = {p.meta["entry_point"] for p in load_dataset("humaneval")}
    sh: set[str] = set()
    for p in load_dataset("mtbench", all_turns=True):
        for turn in p.meta["turns"]:
            sh |= _shingles(turn)
    return entry, sh


def is_evaluation_like(text: str, entry_points: set[str], mt_shingles: set[str]) -> bool:
    if any(f"def {e}(" in text for e in entry_points):
        return True
    return bool(_shingles(text) & mt_shingles)


def build_prompts(count: int = 8000, seed: int = 0) -> list[Prompt]:
    """The prompt set: deterministic for a seed and Python version, deduplicated, shuffled."""
    if count < 1:
        raise JetSpecError(f"the prompt count must be positive, got {count}")
    r = random.Random(seed)
    pool = _own_stubs(r) + _stdlib_prompts(r)
    pool += _templated(r, max(count * 2, 1000))
    pool += _extraction(random.Random(f"extraction-{seed}"), max(count // 10, 100))
    entry, sh = evaluation_guard()
    seen, out = set(), []
    for p in pool:
        if p.text in seen or is_evaluation_like(p.text, entry, sh):
            continue
        seen.add(p.text)
        out.append(p)
    r.shuffle(out)
    return out[:count]


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' → (I, N) with 0 <= I < N (the I-th of N contiguous slices)."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise JetSpecError(f"--shard takes I/N, e.g. 0/2, got {text!r}") from None
    if not 0 <= i < n:
        raise JetSpecError(f"--shard {text}: need 0 <= I < N")
    return i, n


def select_prompts(prompts: list[Prompt], kinds: list[str] | None = None, limit: int = 0,
                   shard: tuple[int, int] = (0, 1)) -> list[Prompt]:
    """Keep the given kinds, then the first `limit`, then the shard-th of N contiguous slices
    (so N machines, or N GPUs of one, each answer one slice of the same file)."""
    if kinds:
        wanted, known = set(kinds), {p.kind for p in prompts}
        if wanted - known:
            raise JetSpecError(f"no prompts of kind {', '.join(sorted(wanted - known))}; "
                               f"the file has {', '.join(sorted(known))}")
        prompts = [p for p in prompts if p.kind in wanted]
    if limit:
        prompts = prompts[:limit]
    i, n = shard
    return prompts[i * len(prompts) // n:(i + 1) * len(prompts) // n]


def save_prompts(prompts: list[Prompt], path: str | Path) -> str:
    """Write JSONL; returns the sha256 of the file."""
    text = "".join(json.dumps({"kind": p.kind, "text": p.text}) + "\n" for p in prompts)
    Path(path).write_text(text, encoding="utf-8")
    return hashlib.sha256(text.encode()).hexdigest()


def load_prompts(path: str | Path) -> tuple[list[Prompt], str]:
    """Read a JSONL prompt file; returns the prompts and the file's sha256."""
    p = Path(path)
    if not p.is_file():
        raise JetSpecError(f"prompt file {p} does not exist; make one with `train prompts --out {p}`")
    raw = p.read_bytes()
    out = []
    for i, line in enumerate(raw.decode("utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            out.append(Prompt(str(d.get("kind", "chat")), str(d["text"])))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise JetSpecError(f"{p} line {i + 1} is not a prompt record ({e})") from e
    if not out:
        raise JetSpecError(f"prompt file {p} holds no prompts")
    return out, hashlib.sha256(raw).hexdigest()
