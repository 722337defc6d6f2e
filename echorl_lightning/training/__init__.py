"""Lightning glue: the configs the module takes, the loss it combines, and the module itself."""
