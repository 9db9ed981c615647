"""`onnxkd sweep`: many students from one cache, a leaderboard, a Pareto front, a choice."""
