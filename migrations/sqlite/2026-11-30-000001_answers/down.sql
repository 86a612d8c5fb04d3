DROP TABLE feedback;
DROP TABLE answers;
DROP TABLE conversations;
