"""Models: the animator (GoHD Generator_Semantic, LIA), discriminators, and the other stages."""
