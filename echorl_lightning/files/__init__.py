"""Reading the files a user points the CLI at (YAML configs, model and tokenizer folders; data rows are read by
``echorl_lightning.data.tables``), with errors that name the file, the line or folder member, and what is wrong.

``text`` decodes a text file (UTF-8, with or without a BOM; UTF-16/32 with a BOM) or says what its bytes are;
``model_folder`` checks a model or tokenizer folder before anything loads from it; ``config_file`` checks a
YAML config before the parser reads it and turns the parser's errors into one line naming the file, line and key.
"""
