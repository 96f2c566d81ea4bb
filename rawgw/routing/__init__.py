"""Pure routing policy: auth, route match, candidates, key choice, cooldown, body rewrite."""
