"""Layer 4: reads for the faces (vectors, search, tables, info, evaluation); never write a page, label
or cluster. Import the store and below."""
