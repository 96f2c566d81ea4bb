"""Wire helpers shared by both legs: header filtering, the Date cache, canned responses."""
