"""What a run leaves for people to read: the model card, predictions files and the dataset audit."""
