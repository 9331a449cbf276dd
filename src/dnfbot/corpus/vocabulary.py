"""The category vocabulary that filters, pickers and help texts offer (data/categories.yaml assigns them).

category1 ∈ CATEGORY1; category2 only under 공략, ∈ CATEGORY2; category3 is the board (a dungeon, an equipment
board or a class). tests/test_corpus.py checks that the table uses exactly these."""

CATEGORY1 = ("공략", "장비", "직업")
CATEGORY2 = ("레이드", "레기온", "기타 던전")
GUIDES = CATEGORY1[0]  # the category1 whose articles have a category2
