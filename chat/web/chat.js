// the chat page script
